"""Telling the caller a job ended: a signed JSON POST of the used configuration to its ``webhook`` URL.

The caller marks a project done only when its webhook is hit, so delivery is retried on network errors and 5xx
answers, with exponential backoff and jitter, a bounded number of times; every attempt and the outcome are recorded on
the job, and a webhook never fails the job.

The URL is user-supplied, so the server guards itself against server-side request forgery: the host is resolved
here, every address it resolves to is checked (private, loopback, link-local, reserved, multicast, unspecified and
cloud metadata addresses are refused unless the server's allowlist permits them), the connection goes to the checked
address (a second DNS answer can't swap it, "DNS rebinding"), and redirects are followed by hand, each target checked
again. With a secret the body is signed: ``X-Scarches-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>``
over ``X-Scarches-Timestamp``; receivers check it with :func:`verify_signature` (see docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Scarches-Timestamp"
SIGNATURE_HEADER = "X-Scarches-Signature"
USER_AGENT = "scarches-api-webhook/1"
MAX_REDIRECTS = 3
MAX_BACKOFF_S = 60.0
_REDIRECTS = (301, 302, 303, 307, 308)

# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba): refused even when a broader
# allowlist range covers them, unless the allowlist names the address itself.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class WebhookRefused(Exception):
    """The URL or a redirect target is not one the server may call (SSRF guard); never retried."""


@dataclass
class WebhookAttempt:
    """One try: when, where it ended up (after redirects), its answer or error, how long it took."""

    at: str
    url: str
    status_code: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    address: str | None = None
    redirects: list[str] = field(default_factory=list)


@dataclass
class WebhookDelivery:
    """How one webhook call went: the outcome (``ok``, last ``status_code``/``error``) and every attempt."""

    url: str
    ok: bool
    status_code: int | None
    error: str | None
    attempts: list[dict[str, Any]]
    at: str
    duration_s: float
    refused_reason: str | None = None
    signed: bool = False

    @property
    def tries(self) -> int:
        return len(self.attempts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the SSRF guard -----------------------------------------------------------------------------------------------
def _ip(text: str) -> IPAddress:
    ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why the server must not call ``ip`` on a user's behalf, or None for a public address."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for attr, what in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_private", "a private address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "the unspecified address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attr):
            return what
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), which is_private leaves out
        return "not a public address"
    return None


class Allowlist:
    """Server-side exceptions to the guard: CIDRs (``10.0.0.0/8``, ``127.0.0.1/32``, a bare IP) and host names
    (``hooks.internal``, or ``*.internal`` for any subdomain) that may resolve to non-public addresses."""

    def __init__(self, entries: Iterable[str] | str | None = None) -> None:
        if isinstance(entries, str):
            entries = entries.split(",")
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: list[str] = []
        for raw in entries or ():
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.append(entry.rstrip("."))

    def permits_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts)

    def permits_ip(self, ip: IPAddress) -> bool:
        if ip in METADATA_ADDRESSES:  # only by name: a broad range like 169.254.0.0/16 doesn't open the metadata
            return any(net.num_addresses == 1 and ip in net for net in self.networks)
        return any(ip.version == net.version and ip in net for net in self.networks)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_target(url: httpx.URL, allow: Allowlist, resolver: Resolver = system_resolver) -> IPAddress:
    """The address to connect to for ``url``; WebhookRefused unless every address it resolves to may be called.

    Raises ``socket.gaierror`` (a network error, retried) when the name doesn't resolve.
    """
    if url.scheme not in ("http", "https"):
        raise WebhookRefused(f"only http and https webhooks are called, not {url.scheme or 'a URL without scheme'!r}")
    host = url.host
    if not host:
        raise WebhookRefused("the webhook URL has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [_ip(host)]
    except ValueError:
        addresses = [_ip(a) for a in resolver(host, port)]
    if not addresses:
        raise socket.gaierror(f"{host} resolved to no address")
    host_allowed = allow.permits_host(host)
    for ip in addresses:
        reason = forbidden_reason(ip)
        if reason and not (allow.permits_ip(ip) or (host_allowed and ip not in METADATA_ADDRESSES)):
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise WebhookRefused(
                f"{shown} is {reason}; webhooks may only call public addresses unless the server's "
                "SCARCHES_WEBHOOK_ALLOW lists it"
            )
    return addresses[0]


# --- signing ------------------------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: int | str,
    body: bytes | str,
    signature: str,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """For receivers: True when ``signature`` (the X-Scarches-Signature header) signs ``body`` (the raw request bytes)
    at ``timestamp`` (the X-Scarches-Timestamp header) with ``secret``, and the timestamp is within ``tolerance_s``
    seconds of now (a replayed old request fails)."""
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    if isinstance(body, str):
        body = body.encode()
    return hmac.compare_digest(sign(secret, ts, body).encode(), (signature or "").strip().encode())


# --- delivery -----------------------------------------------------------------------------------------------------
def backoff_delay(attempt: int, backoff: float) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): ``backoff * 2**(attempt-1)``, jittered to 50-150%."""
    return min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.5)


def max_delivery_seconds(timeout: float, attempts: int = 4, backoff: float = 0.5) -> float:
    """An upper bound of how long :func:`deliver` may take (each request timing out, the longest backoffs)."""
    requests = max(attempts, 1) * (MAX_REDIRECTS + 1)
    waits = sum(min(backoff * 2 ** (n - 1), MAX_BACKOFF_S) * 1.5 for n in range(1, max(attempts, 1)))
    # httpx's timeout bounds each phase (connect, write, read) separately.
    return requests * 3 * timeout + waits


def _post_once(
    client: httpx.Client,
    url: httpx.URL,
    body: bytes,
    secret: str | None,
    allow: Allowlist,
    resolver: Resolver,
    attempt: WebhookAttempt,
) -> httpx.Response:
    """One attempt: POST to the checked address of ``url``, following up to MAX_REDIRECTS redirects by hand."""
    for hop in range(MAX_REDIRECTS + 1):
        ip = check_target(url, allow, resolver)
        attempt.address = str(ip)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Host": url.netloc.decode("ascii")}
        if secret:
            timestamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        response = client.post(url.copy_with(host=str(ip)), content=body, headers=headers, extensions=extensions)
        if response.status_code not in _REDIRECTS or "location" not in response.headers:
            return response
        if hop == MAX_REDIRECTS:
            raise WebhookRefused(f"more than {MAX_REDIRECTS} redirects")
        try:
            url = url.join(response.headers["location"])
        except httpx.InvalidURL as exc:
            raise WebhookRefused(f"redirect to an invalid URL: {exc}") from None
        attempt.redirects.append(str(url))
        attempt.url = str(url)
        # The signed body is sent again as it was (a webhook's payload must not be dropped by a 302's GET).
    raise AssertionError("unreachable")


def deliver(
    url: str,
    payload: dict[str, Any],
    timeout: float = 30.0,
    *,
    secret: str | None = None,
    allow: Sequence[str] | str | None = None,
    attempts: int = 4,
    backoff: float = 0.5,
    resolver: Resolver = system_resolver,
    sleep: Callable[[float], None] = time.sleep,
) -> WebhookDelivery:
    """POST ``payload`` as JSON to ``url``; never raise.

    ``secret`` signs the body; ``allow`` lists CIDRs and host names that may be called although not public;
    ``attempts`` bounds the tries (network errors, 5xx and 429 are retried after ``backoff * 2**n`` seconds, jittered);
    a refused address, a redirect loop or a 4xx answer ends the delivery at once.
    """
    started = time.perf_counter()
    at = datetime.now(timezone.utc).isoformat()
    # default=str: a payload may carry paths or timestamps; the caller only needs readable JSON.
    body = json.dumps(payload, default=str).encode()
    guard = allow if isinstance(allow, Allowlist) else Allowlist(allow)
    records: list[WebhookAttempt] = []
    status: int | None = None
    error: str | None = None
    refused: str | None = None
    ok = False
    try:
        target = httpx.URL(url)
    except Exception as exc:  # httpx.InvalidURL, TypeError for a non-string
        target = None
        error = f"invalid webhook URL: {exc}"
        records.append(WebhookAttempt(at=at, url=str(url), error=error))
    if target is not None:
        # trust_env=False: an HTTP(S)_PROXY from the environment would connect by name and undo the address check.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for n in range(1, max(attempts, 1) + 1):
                attempt = WebhookAttempt(at=datetime.now(timezone.utc).isoformat(), url=str(target))
                records.append(attempt)
                t0 = time.perf_counter()
                retry = False
                try:
                    response = _post_once(client, target, body, secret, guard, resolver, attempt)
                    status = attempt.status_code = response.status_code
                    if response.is_success:
                        ok, error = True, None
                    else:
                        error = attempt.error = f"HTTP {status}"
                        retry = status >= 500 or status == 429  # else the receiver understood and refused
                except WebhookRefused as exc:
                    status, refused = None, str(exc)
                    error = attempt.error = f"refused: {exc}"
                except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                    status, error = None, f"invalid webhook URL: {exc}"
                    attempt.error = error
                except (httpx.HTTPError, OSError) as exc:  # OSError: socket.gaierror from resolving the host
                    status = None
                    error = attempt.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    retry = True
                except Exception as exc:  # a webhook must never take the job down with it
                    status, error = None, f"{type(exc).__name__}: {exc}"
                    attempt.error = error
                attempt.duration_s = round(time.perf_counter() - t0, 3)
                if ok or not retry or n == attempts:
                    break
                sleep(backoff_delay(n, backoff))
    delivery = WebhookDelivery(
        url=url,
        ok=ok,
        status_code=status,
        error=error,
        attempts=[asdict(a) for a in records],
        at=at,
        duration_s=round(time.perf_counter() - started, 3),
        refused_reason=refused,
        signed=bool(secret),
    )
    if delivery.ok:
        log.info("webhook %s answered %s after %d attempt(s)", url, status, len(records))
    else:
        log.warning("webhook %s failed after %d attempt(s): %s", url, len(records), error)
    return delivery
