"""A job's record: what was asked, where it stands, what it produced and whether the caller was told."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


@dataclass
class Job:
    """One mapping job. Timestamps are ISO 8601 in UTC; ``config`` is the used configuration."""

    id: str
    status: JobStatus
    config: dict[str, Any]
    created_at: str
    mode: str = "async"
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    webhook_delivery: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data
