"""Job records in a SQL database through SQLAlchemy: a SQLite file by default, PostgreSQL for several machines.

Every change that decides who owns a job is one conditional UPDATE (compare-and-set on the values just read), so
two workers, two reapers or an API and a worker racing on one job never both win — on SQLite (one writer at a time)
and on PostgreSQL (the row lock re-checks the WHERE) alike.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scarches_api.errors import NotFoundError
from scarches_api.jobs.errors import JobConflictError
from scarches_api.jobs.models import CPU_QUEUE, FINAL, Job, JobStatus

log = logging.getLogger(__name__)

metadata = sa.MetaData()

jobs = sa.Table(
    "scarches_jobs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False, default=CPU_QUEUE),
    sa.Column("stage", sa.String(32)),
    sa.Column("epoch", sa.Integer),
    sa.Column("epochs", sa.Integer),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("webhook_delivery", sa.Text),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("updated_at", sa.String(40)),
    sa.Column("created_ts", sa.Float),
    sa.Column("started_ts", sa.Float),
    sa.Column("finished_ts", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("requeues", sa.Integer, nullable=False, default=0),
    sa.Column("task_id", sa.String(96)),
    sa.Column("worker", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("cancel_requested_at", sa.Float),
    sa.Column("hard_stop_at", sa.Float),
    sa.Column("published_attempt", sa.Integer),
)

# Idempotency-Key of POST /query → the job it started, and a hash of the configuration it was sent with.
idempotency_keys = sa.Table(
    "scarches_idempotency_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("config_sha256", sa.String(64), nullable=False),
    sa.Column("created_ts", sa.Float, nullable=False),
)

stage_durations = sa.Table(
    "scarches_stage_durations",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
)

_JSON_FIELDS = ("config", "result", "error", "webhook_delivery")
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def _config_sha256(config: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL: URLs pass through; a path becomes a SQLite file URL."""
    text = str(target)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL: readers (the API, gunicorn's other workers) never wait for the writer (a worker's progress).
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@dataclass
class Claim:
    """What a worker got when it asked to run a job: an attempt number, or why not (``reason``)."""

    attempt: int | None
    reason: str
    job: Job | None = None

    @property
    def granted(self) -> bool:
        return self.attempt is not None


class JobStore:
    """Create, update and read job records; safe from any thread. One store (engine) per process."""

    def __init__(self, target: str | Path) -> None:
        self.url = database_url(target)
        self.engine = make_engine(self.url)
        metadata.create_all(self.engine)
        self._import_legacy()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # --- creating and reading ---------------------------------------------------------------------------------
    def create(
        self, config: dict[str, Any], *, mode: str = "async", job_id: str | None = None, queue: str = CPU_QUEUE,
        key: str | None = None,
    ) -> Job:
        """Record a queued job; with idempotency ``key``, the key too, in the same transaction (IntegrityError when
        the key is taken)."""
        job_id = job_id or uuid.uuid4().hex
        stamp, ts = now(), time.time()
        with self.engine.begin() as conn:
            if key is not None:
                conn.execute(idempotency_keys.insert().values(key=key, job_id=job_id, config_sha256=_config_sha256(config),
                                                              created_ts=ts))
            conn.execute(
                jobs.insert().values(
                    id=job_id, status=JobStatus.QUEUED.value, mode=mode, queue=queue, config=_dump(config),
                    created_at=stamp, updated_at=stamp, created_ts=ts, attempts=0, requeues=0, task_id=job_id,
                )
            )
        return self.get(job_id)

    def create_once(self, config: dict[str, Any], *, key: str, mode: str = "async", queue: str = CPU_QUEUE) -> tuple[Job, bool]:
        """The job started under idempotency ``key``, creating it if there is none: (job, created).

        The key and the job are inserted in one transaction, so of two requests racing with one key exactly one
        creates the job. The same key with another configuration is a JobConflictError (409).
        """
        try:
            return self.create(config, mode=mode, queue=queue, key=key), True
        except sa.exc.IntegrityError:  # the key is taken: by an earlier request, or one racing this one
            found = self.job_for_key(key, config)
            if found is None:
                raise
            return found, False

    def job_for_key(self, key: str, config: dict[str, Any]) -> Job | None:
        """The job started under idempotency ``key``, or None; 409 when the key came with another configuration."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(idempotency_keys).where(idempotency_keys.c.key == key)).mappings().first()
        if row is None:
            return None
        if row["config_sha256"] != _config_sha256(config):
            raise JobConflictError(
                f"Idempotency-Key {key!r} was used for job {row['job_id']} with another configuration; use a new key "
                "for a new query",
                details={"job_id": row["job_id"]},
            )
        return self.get(row["job_id"])

    def get(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist", details={"job_id": job_id})
        return _job(row)

    def list(self, *, limit: int = 100, offset: int = 0, status: JobStatus | None = None) -> tuple[list[Job], int]:
        """The newest jobs first, and how many there are in all."""
        where = [jobs.c.status == status.value] if status else []
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = conn.execute(
                sa.select(jobs).where(*where).order_by(jobs.c.seq.desc()).limit(limit).offset(offset)
            ).mappings().all()
        return [_job(row) for row in rows], int(count)

    def check(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()

    def close(self) -> None:
        self.engine.dispose()

    # --- a worker running a job -------------------------------------------------------------------------------
    def mark_received(self, job_id: str, *, worker: str, pid: int) -> None:
        """A worker holds the job's message: from now on a lost worker shows as a stale heartbeat."""
        self._update(
            job_id, jobs.c.status == JobStatus.QUEUED.value, must_exist=False,
            heartbeat_at=time.time(), worker=worker, pid=pid,
        )

    def claim(
        self,
        job_id: str,
        *,
        worker: str,
        pid: int,
        stale_after: float,
        max_attempts: int,
        alive: Callable[[int], bool],
    ) -> Claim:
        """Take the job for a new attempt, unless it is final, cancelled, or alive in another attempt.

        A running job is taken over when its heartbeat is older than ``stale_after`` or when it ran on this host in a
        process that is gone. A job whose ``max_attempts`` are used up is failed instead (reason ``exhausted``).
        """
        job = self.get(job_id)
        status = job.status
        if status in FINAL:
            return Claim(None, f"already {status.value}", job)
        current = time.time()
        if status is JobStatus.RUNNING:
            stale = job.heartbeat_at is None or job.heartbeat_at < current - stale_after
            gone = job.worker == worker and job.pid is not None and (job.pid == pid or not alive(job.pid))
            if not (stale or gone):
                return Claim(None, "running in another attempt", job)
        guard = (jobs.c.status == status.value, jobs.c.attempts == job.attempts)
        if job.cancel_requested:
            ok = self._finish(job_id, JobStatus.CANCELLED, error=cancelled_error(), guard=guard)
            return Claim(None, "cancelled" if ok else "lost the race", job)
        if job.attempts >= max_attempts:
            error = {
                "error": f"the job's worker was lost {job.attempts} time(s) (killed, out of memory or its machine "
                "stopped); it was not tried again",
                "kind": "interrupted",
                "status_code": 503,
            }
            ok = self._finish(job_id, JobStatus.FAILED, error=error, guard=guard)
            return Claim(None, "exhausted" if ok else "lost the race", job)
        stamp = now()
        ok = self._update(
            job_id, *guard, must_exist=False,
            status=JobStatus.RUNNING.value, attempts=job.attempts + 1, started_at=stamp, started_ts=current,
            updated_at=stamp, worker=worker, pid=pid, heartbeat_at=current, stage=None, epoch=None, epochs=None,
        )
        if not ok:
            return Claim(None, "lost the race", job)
        return Claim(job.attempts + 1, "granted", self.get(job_id))

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Record that the attempt is alive; False when it no longer owns the job."""
        return self._update(job_id, *self._owner(attempt), must_exist=False, heartbeat_at=time.time())

    def progress(
        self,
        job_id: str,
        stage: str | None = None,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        reset_epochs: bool = False,
        attempt: int | None = None,
    ) -> str:
        """Record the stage a job entered and/or a training epoch; ``reset_epochs`` clears the last count.

        With ``attempt``: only while that attempt owns the job. Returns ``ok``, ``cancel`` (a cancel was requested:
        stop) or ``lost`` (the job is no longer this attempt's).
        """
        fields: dict[str, Any] = {"updated_at": now()}
        if stage is not None:
            fields["stage"] = stage
        if reset_epochs:
            fields.update(epoch=None, epochs=None)
        if epoch is not None:
            fields.update(epoch=epoch, epochs=epochs)
        if attempt is None:
            self._update(job_id, **fields)
            return "ok"
        fields["heartbeat_at"] = time.time()
        if self._update(job_id, *self._owner(attempt), jobs.c.cancel_requested_at.is_(None), must_exist=False, **fields):
            return "ok"
        return self._why_not(job_id, attempt)

    def begin_publish(self, job_id: str, attempt: int) -> str:
        """The gate before an attempt writes its outputs: ``ok`` only while it owns the job and no cancel was asked.

        From here on the job can no longer be cancelled (its outputs are being written).
        """
        stamp = now()
        ok = self._update(
            job_id, *self._owner(attempt), jobs.c.cancel_requested_at.is_(None), must_exist=False,
            stage="publish", published_attempt=attempt, updated_at=stamp, heartbeat_at=time.time(),
        )
        return "ok" if ok else self._why_not(job_id, attempt)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record the job's end; with ``attempt`` only while that attempt owns it (True when recorded)."""
        guard = self._owner(attempt) if attempt is not None else (jobs.c.status.in_(_ACTIVE),)
        return self._finish(job_id, status, result=result, error=error, guard=guard)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        guard: tuple[Any, ...],
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        stamp, ts = now(), time.time()
        with self.engine.begin() as conn:
            done = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, *guard)
                .values(
                    status=status.value, finished_at=stamp, finished_ts=ts, updated_at=stamp,
                    result=_dump(result), error=_dump(error), heartbeat_at=None,
                )
            ).rowcount == 1
            timings = (result or {}).get("timings") or {}
            if done and status is JobStatus.DONE and timings:
                conn.execute(
                    stage_durations.insert(),
                    [{"job_id": job_id, "stage": name, "seconds": float(s)} for name, s in timings.items()],
                )
        return done

    def set_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        self._update(job_id, webhook_delivery=_dump(delivery), updated_at=now())

    # --- cancelling -------------------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> str:
        """Cancel a job: ``cancelled`` (it was queued and is cancelled now), ``requested`` (it runs and will stop),
        ``final`` (it had ended already) or ``publishing`` (it is writing its outputs: too late)."""
        for _ in range(5):
            job = self.get(job_id)
            if job.status in FINAL:
                return "final"
            if job.status is JobStatus.QUEUED:
                guard = (jobs.c.status == JobStatus.QUEUED.value, jobs.c.attempts == job.attempts)
                if self._finish(job_id, JobStatus.CANCELLED, error=cancelled_error(), guard=guard):
                    return "cancelled"
                continue
            if job.cancel_requested:
                return "requested"
            if job.stage == "publish":
                return "publishing"
            ok = self._update(
                job_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.attempts == job.attempts,
                sa.or_(jobs.c.stage.is_(None), jobs.c.stage != "publish"), must_exist=False,
                cancel_requested_at=time.time(), updated_at=now(),
            )
            if ok:
                return "requested"
        return "requested"

    def finish_cancelled(self, job_id: str) -> bool:
        """A running job whose cancel was asked has stopped (killed): record it cancelled (True when this call did)."""
        guard = (jobs.c.status == JobStatus.RUNNING.value, jobs.c.cancel_requested_at.is_not(None))
        return self._finish(job_id, JobStatus.CANCELLED, error=cancelled_error(), guard=guard)

    def overdue_cancels(self, grace: float) -> list[Job]:
        """Running jobs asked to cancel more than ``grace`` seconds ago that were not hard-stopped yet."""
        limit = time.time() - grace
        return self._select(
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.cancel_requested_at.is_not(None),
            jobs.c.cancel_requested_at < limit,
            jobs.c.hard_stop_at.is_(None),
        )

    def mark_hard_stop(self, job: Job) -> bool:
        return self._update(
            job.id, jobs.c.hard_stop_at.is_(None), jobs.c.attempts == job.attempts, must_exist=False,
            hard_stop_at=time.time(),
        )

    # --- the reaper ---------------------------------------------------------------------------------------------
    def stale(self, stale_after: float) -> list[Job]:
        """Queued or running jobs whose holder's heartbeat is older than ``stale_after`` seconds."""
        limit = time.time() - stale_after
        return self._select(jobs.c.status.in_(_ACTIVE), jobs.c.heartbeat_at.is_not(None), jobs.c.heartbeat_at < limit)

    def requeue(self, job: Job, task_id: str) -> bool:
        """Put a lost job back in the queue under a new task id, unless someone else changed it since it was read."""
        return self._update(
            job.id, jobs.c.status == job.status.value, jobs.c.attempts == job.attempts,
            jobs.c.heartbeat_at == job.heartbeat_at, must_exist=False,
            status=JobStatus.QUEUED.value, heartbeat_at=None, stage=None, epoch=None, epochs=None,
            task_id=task_id, requeues=job.requeues + 1, updated_at=now(),
        )

    def fail_stale(self, job: Job, error: dict[str, Any], status: JobStatus = JobStatus.FAILED) -> bool:
        guard = (jobs.c.status == job.status.value, jobs.c.attempts == job.attempts, jobs.c.heartbeat_at == job.heartbeat_at)
        return self._finish(job.id, status, error=error, guard=guard)

    # --- metrics ------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status: int(n) for status, n in rows}

    def queued_by_queue(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs.c.queue, sa.func.count()).where(jobs.c.status == JobStatus.QUEUED.value).group_by(jobs.c.queue)
            ).all()
        return {queue: int(n) for queue, n in rows}

    def duration_histogram(self, buckets: tuple[float, ...]) -> dict[str, tuple[list[int], int, float]]:
        """Per final status: cumulative counts per bucket bound, count and sum of (finished - started) seconds."""
        duration = jobs.c.finished_ts - jobs.c.started_ts
        where = (jobs.c.started_ts.is_not(None), jobs.c.finished_ts.is_not(None))
        return self._histogram(jobs, jobs.c.status, duration, buckets, where)

    def stage_histogram(self, buckets: tuple[float, ...]) -> dict[str, tuple[list[int], int, float]]:
        return self._histogram(stage_durations, stage_durations.c.stage, stage_durations.c.seconds, buckets, ())

    def _histogram(self, table: sa.Table, label: Any, value: Any, buckets: tuple[float, ...], where: tuple) -> dict:
        columns = [sa.func.sum(sa.case((value <= b, 1), else_=0)) for b in buckets]
        query = sa.select(label, sa.func.count(), sa.func.coalesce(sa.func.sum(value), 0.0), *columns)
        with self.engine.connect() as conn:
            rows = conn.execute(query.select_from(table).where(*where).group_by(label)).all()
        return {row[0]: ([int(n or 0) for n in row[3:]], int(row[1]), float(row[2])) for row in rows}

    # --- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _owner(attempt: int) -> tuple[Any, ...]:
        return (jobs.c.status == JobStatus.RUNNING.value, jobs.c.attempts == attempt)

    def _why_not(self, job_id: str, attempt: int) -> str:
        job = self.get(job_id)
        if job.status is JobStatus.RUNNING and job.attempts == attempt and job.cancel_requested:
            return "cancel"
        if job.status is JobStatus.CANCELLED:
            return "cancel"
        return "lost"

    def _update(self, job_id: str, *guard: Any, must_exist: bool = True, **fields: Any) -> bool:
        with self.engine.begin() as conn:
            count = conn.execute(jobs.update().where(jobs.c.id == job_id, *guard).values(**fields)).rowcount
        if count == 0 and must_exist:
            self.get(job_id)  # raises NotFoundError for an unknown id
        return count == 1

    def _select(self, *where: Any) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs).where(*where).order_by(jobs.c.seq)).mappings().all()
        return [_job(row) for row in rows]

    def _import_legacy(self) -> None:
        """Copy the records of the earlier stdlib-sqlite3 store (table ``jobs``) once, into the new table."""
        if self.dialect != "sqlite":
            return
        with self.engine.begin() as conn:
            names = set(sa.inspect(conn).get_table_names())
            if "jobs" not in names or conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one():
                return
            legacy = conn.execute(sa.text("SELECT * FROM jobs ORDER BY created_at, rowid")).mappings().all()
            for row in legacy:
                data = {key: row[key] for key in row.keys() if key in jobs.c and key != "seq"}
                data.setdefault("queue", CPU_QUEUE)
                data.setdefault("attempts", 1 if data.get("started_at") else 0)
                data.setdefault("requeues", 0)
                if data["status"] in _ACTIVE:  # the old runner's threads are gone with its process
                    data.update(status=JobStatus.FAILED.value, error=_dump(
                        {"error": "the service was upgraded while this job waited or ran; submit it again",
                         "kind": "interrupted", "status_code": 503}))
                conn.execute(jobs.insert().values(**data))
            if legacy:
                log.info("imported %d job records from the earlier store", len(legacy))


def cancelled_error() -> dict[str, Any]:
    return {"error": "the job was cancelled on request (DELETE /jobs/{id})", "kind": "cancelled", "status_code": 409}


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _job(row: Any) -> Job:
    data = {column.name: row[column.name] for column in jobs.columns if column.name != "seq"}
    for name in _JSON_FIELDS:
        data[name] = json.loads(data[name]) if data[name] is not None else None
    data["status"] = JobStatus(data["status"])
    return Job(**data)
