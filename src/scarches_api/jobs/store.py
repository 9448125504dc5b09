"""Job records in SQLite (stdlib sqlite3): shared by the threads of a worker and by gunicorn's worker processes."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scarches_api.errors import NotFoundError
from scarches_api.jobs.models import Job, JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    stage       TEXT,
    epoch       INTEGER,
    epochs      INTEGER,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    updated_at  TEXT,
    result      TEXT,
    error       TEXT,
    webhook_delivery TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""
_JSON_FIELDS = ("config", "result", "error", "webhook_delivery")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Create, update and read job records; every method is safe to call from any thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection guarded by a lock; WAL lets gunicorn's other worker processes read while one writes.
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    # --- writing ----------------------------------------------------------------------------------------------
    def create(self, config: dict[str, Any], *, mode: str = "async", job_id: str | None = None) -> Job:
        job = Job(
            id=job_id or uuid.uuid4().hex, status=JobStatus.QUEUED, config=config, created_at=now(), mode=mode
        )
        job.updated_at = job.created_at
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, mode, config, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.status.value, mode, _dump(config), job.created_at, job.updated_at),
            )
        return job

    def start(self, job_id: str) -> None:
        stamp = now()
        self._update(job_id, status=JobStatus.RUNNING.value, started_at=stamp, updated_at=stamp)

    def progress(
        self,
        job_id: str,
        stage: str | None = None,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        reset_epochs: bool = False,
    ) -> None:
        """Record the stage a job entered and/or a training epoch; ``reset_epochs`` clears the last count."""
        fields: dict[str, Any] = {"updated_at": now()}
        if stage is not None:
            fields["stage"] = stage
        if reset_epochs:
            fields.update(epoch=None, epochs=None)
        if epoch is not None:
            fields.update(epoch=epoch, epochs=epochs)
        self._update(job_id, **fields)

    def finish(
        self, job_id: str, status: JobStatus, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> None:
        stamp = now()
        self._update(
            job_id, status=status.value, finished_at=stamp, updated_at=stamp, result=_dump(result), error=_dump(error)
        )

    def set_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        self._update(job_id, webhook_delivery=_dump(delivery), updated_at=now())

    def _update(self, job_id: str, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            cursor = self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), job_id))
        if cursor.rowcount == 0:
            raise NotFoundError(f"job {job_id!r} does not exist", details={"job_id": job_id})

    # --- reading ----------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist", details={"job_id": job_id})
        return _job(row)

    def list(self, *, limit: int = 100, offset: int = 0, status: JobStatus | None = None) -> tuple[list[Job], int]:
        """The newest jobs first, and how many there are in all."""
        where, args = ("WHERE status = ?", [status.value]) if status else ("", [])
        with self._lock:
            count = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            ).fetchall()
        return [_job(row) for row in rows], int(count)

    def check(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    for name in _JSON_FIELDS:
        data[name] = json.loads(data[name]) if data[name] is not None else None
    data["status"] = JobStatus(data["status"])
    return Job(**data)
