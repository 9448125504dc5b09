"""Structured logs: one JSON object per line, with the job id on every line logged while a job is being handled.

``job_context(job_id)`` sets the id for the current thread or task; Celery's own lines about a task ("Task ...
received", "succeeded") carry it too (taken from the task id, which is the job id or ``<job id>.r<n>``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

current_job: ContextVar[str | None] = ContextVar("scarches_job_id", default=None)

_NOISY = ("scvi", "lightning", "lightning.pytorch", "lightning_fabric", "numba", "urllib3", "botocore")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "job_id"}


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


def job_id_of_task(task_id: str) -> str:
    return task_id.split(".r", 1)[0]


class JobIdFilter(logging.Filter):
    """Adds ``record.job_id``: the job being handled, or the one a Celery task line is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or current_job.get()
        if job_id is None and isinstance(record.args, dict) and isinstance(record.args.get("id"), str):
            job_id = job_id_of_task(record.args["id"])
        record.job_id = job_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None) or current_job.get(),
            "process": record.process,
        }
        for key, value in vars(record).items():  # extra={...} fields
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s%(job)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f" job={job_id}" if job_id else ""
        return super().format(record)


def configure_logging(fmt: str = "json", level: int | str = logging.INFO, *, stream: Any = None) -> None:
    """Send every log line to stderr (or ``stream``) as JSON (or text), job id included; quiet the chatty libraries."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)  # library deprecation chatter, once per process
