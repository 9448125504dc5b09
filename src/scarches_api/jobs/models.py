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
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})

CPU_QUEUE = "scarches"
GPU_QUEUE = "scarches-gpu"


@dataclass
class Job:
    """One mapping job. Timestamps are ISO 8601 in UTC; ``config`` is the used configuration.

    ``attempts`` counts the times a worker started the job (more than one when a worker was lost); ``worker`` is the
    host that runs (or ran) the last attempt; ``cancel_requested`` is set by DELETE /jobs/{id} until the job stops.
    """

    id: str
    status: JobStatus
    config: dict[str, Any]
    created_at: str
    mode: str = "async"
    queue: str = CPU_QUEUE
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    webhook_delivery: dict[str, Any] | None = None
    attempts: int = 0
    requeues: int = 0
    task_id: str | None = None
    worker: str | None = None
    pid: int | None = None
    heartbeat_at: float | None = None
    cancel_requested_at: float | None = None
    hard_stop_at: float | None = None
    published_attempt: int | None = None
    created_ts: float | None = None
    started_ts: float | None = None
    finished_ts: float | None = None

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None

    @property
    def progress(self) -> float | None:
        """Share (0..1) of the current (or last) training stage's epochs done."""
        if self.epoch is None or not self.epochs:
            return None
        return round(min(self.epoch / self.epochs, 1.0), 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["cancel_requested"] = self.cancel_requested
        data["progress"] = self.progress
        return data
