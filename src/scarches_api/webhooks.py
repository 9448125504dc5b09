"""Telling the caller a job ended: a JSON POST of the used configuration to its ``webhook`` URL.

The caller marks a project done only when its webhook is hit, so delivery is retried a few times on connection
errors and 5xx answers; its outcome is recorded on the job and never fails the job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookDelivery:
    """How one webhook call went."""

    url: str
    ok: bool
    status_code: int | None
    error: str | None
    attempts: int
    at: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deliver(
    url: str, payload: dict[str, Any], timeout: float = 30.0, *, attempts: int = 3, backoff: float = 0.5
) -> WebhookDelivery:
    """POST ``payload`` as JSON to ``url``; retry connection errors and 5xx answers; never raise."""
    started = time.perf_counter()
    at = datetime.now(timezone.utc).isoformat()
    # default=str: a payload may carry paths or timestamps; the caller only needs readable JSON.
    body = json.dumps(payload, default=str).encode()
    status: int | None = None
    error: str | None = None
    tries = 0
    for tries in range(1, max(attempts, 1) + 1):
        try:
            response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout)
            status = response.status_code
            if response.is_success:
                error = None
                break
            error = f"HTTP {status}"
            if status < 500:
                break  # the receiver understood and refused: asking again changes nothing
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            error = f"invalid webhook URL: {exc}"
            break
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a webhook must never take the job down with it
            status, error = None, f"{type(exc).__name__}: {exc}"
            break
        if tries < attempts:
            time.sleep(backoff * 2 ** (tries - 1))
    delivery = WebhookDelivery(
        url=url,
        ok=error is None,
        status_code=status,
        error=error,
        attempts=tries,
        at=at,
        duration_s=round(time.perf_counter() - started, 3),
    )
    if delivery.ok:
        log.info("webhook %s answered %s", url, status)
    else:
        log.warning("webhook %s failed after %d attempt(s): %s", url, tries, error)
    return delivery
