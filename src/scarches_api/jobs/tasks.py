"""The Celery task: one mapping job attempt, the same code in the embedded worker and on any scale-out machine.

An attempt: claim the job (a new attempt number, unless it is final, cancelled or alive elsewhere) → heartbeat while it
runs → ``runner._map`` in its own work folder, progress and the cancel check at each epoch and stage → the publish
gate (only the attempt that owns the job, not cancelled, writes outputs) → remove the work folder → record the end
(only if this attempt still owns the job) → webhook.

A job already done is never run again; a job whose worker was lost is re-run by the next delivery of its message or
by the reaper; an attempt that was taken for lost and finds the job re-assigned stops without writing anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scarches_api.config import QueryConfig, Settings
from scarches_api.errors import ScarchesError
from scarches_api.io.storage import Storage, storage_from_settings
from scarches_api.jobs import runner
from scarches_api.jobs.errors import JobCancelled, JobSuperseded
from scarches_api.jobs.models import Job, JobStatus
from scarches_api.jobs.store import JobStore, cancelled_error
from scarches_api.logging_setup import job_context

log = logging.getLogger(__name__)

HOST = socket.gethostname()


# --- what a worker process works with ---------------------------------------------------------------------------
@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    storage: Storage


_settings: Settings | None = None
_context: tuple[int, WorkerContext] | None = None
_lock = threading.Lock()
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    """A forked pool process starts clean: another thread of the parent may have held the lock or a connection at the
    fork, so neither is touched here (the parent's store is kept, unused and unclosed, so it is never finalised)."""
    global _lock, _context
    _lock = threading.Lock()
    if _context is not None:
        _inherited.append(_context)
    _context = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(settings: Settings) -> None:
    """Set the settings this process's tasks use (the worker command does; otherwise they come from the environment)."""
    global _settings, _context
    with _lock:
        _settings, _context = settings, None


def context() -> WorkerContext:
    """This process's settings, job store and storage; made afresh in a forked pool process (no shared connections)."""
    global _context
    with _lock:
        if _context is None or _context[0] != os.getpid():
            if _context is not None:
                _inherited.append(_context)  # the parent's connections stay the parent's
            from scarches_api.jobs.celery_app import job_database

            settings = _settings or Settings()
            store = JobStore(job_database(settings))
            _context = (os.getpid(), WorkerContext(settings, store, storage_from_settings(settings)))
        return _context[1]


def register(app: Any) -> None:
    """Add the job task to a Celery app."""

    @app.task(name="scarches.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Any, job_id: str) -> str:
        return execute_job(job_id, context())


# --- one attempt --------------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """True while a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Heartbeat:
    """A thread stamping the job while the attempt runs; notices when the attempt no longer owns the job."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store, self.job_id, self.attempt, self.interval = store, job_id, attempt, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        with job_context(self.job_id):
            while not self._stop.wait(self.interval):
                try:
                    if not self.store.heartbeat(self.job_id, self.attempt):
                        self.lost = True
                        log.warning("attempt %d no longer owns the job", self.attempt)
                        return
                except Exception:  # a database hiccup: try again next beat
                    log.warning("could not record the heartbeat", exc_info=True)


class AttemptProgress:
    """What ``runner._map`` reports progress to: the store, scoped to this attempt, raising when it must stop."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, heartbeat: Heartbeat) -> None:
        self.store, self.job_id, self.attempt, self.heartbeat = store, job_id, attempt, heartbeat

    def progress(
        self,
        job_id: str,
        stage: str | None = None,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        reset_epochs: bool = False,
    ) -> None:
        if self.heartbeat.lost:
            raise JobSuperseded(job_id)
        if stage == "publish":
            outcome = self.store.begin_publish(job_id, self.attempt)
        else:
            outcome = self.store.progress(
                job_id, stage, epoch=epoch, epochs=epochs, reset_epochs=reset_epochs, attempt=self.attempt
            )
        if outcome == "cancel":
            raise JobCancelled(job_id)
        if outcome == "lost":
            raise JobSuperseded(job_id)


def attempt_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """The attempt's own work folder: ``<work_dir>/<job_id>`` for the first, ``<job_id>.attempt-<n>`` after."""
    root = Path(settings.work_dir)
    return root / job_id if attempt <= 1 else root / f"{job_id}.attempt-{attempt}"


def remove_work_dirs(settings: Settings, job_id: str, *, keep: Path | None = None) -> None:
    """Remove every attempt's work folder of a job on this machine (but ``keep``)."""
    root = Path(settings.work_dir)
    for path in [root / job_id, *root.glob(f"{job_id}.attempt-*")]:
        if path != keep and path.exists():
            shutil.rmtree(path, ignore_errors=True)


def execute_job(job_id: str, ctx: WorkerContext) -> str:
    """Run one attempt of a job; returns what happened (for the task result and the log). Never raises."""
    settings, store, storage = ctx.settings, ctx.store, ctx.storage
    with job_context(job_id):
        claim = store.claim(
            job_id, worker=HOST, pid=os.getpid(), stale_after=settings.stale_after,
            max_attempts=settings.max_attempts, alive=pid_alive,
        )
        if not claim.granted:
            log.info("not running the job: %s", claim.reason)
            if claim.reason in ("cancelled", "exhausted"):
                remove_work_dirs(settings, job_id)
                runner.notify(job_id, store, settings)
            return claim.reason
        attempt = claim.attempt
        assert attempt is not None and claim.job is not None
        job: Job = claim.job
        config = QueryConfig.model_validate(job.config)
        work_dir = attempt_dir(settings, job_id, attempt)
        remove_work_dirs(settings, job_id, keep=None if config.debug else work_dir)  # earlier, lost attempts
        log.info("attempt %d started on %s (pid %d)", attempt, HOST, os.getpid())
        heartbeat = Heartbeat(store, job_id, attempt, settings.heartbeat_interval).start()
        status, result, error = JobStatus.FAILED, None, None
        try:
            result = runner._map(job_id, config, AttemptProgress(store, job_id, attempt, heartbeat), storage, settings, work_dir)
            status = JobStatus.DONE
        except JobSuperseded:
            log.warning("attempt %d was taken for lost and the job re-assigned; it stops without writing", attempt)
            heartbeat.stop()
            shutil.rmtree(work_dir, ignore_errors=True)
            return "superseded"
        except JobCancelled:
            log.info("attempt %d stopped: the job was cancelled", attempt)
            status, error = JobStatus.CANCELLED, cancelled_error()
        except ScarchesError as exc:
            log.warning("job failed: %s", exc.message)
            error = {**exc.to_dict(), "status_code": exc.status_code}
        except Exception:
            error = runner.internal_error(f"job {job_id} failed unexpectedly")
        finally:
            heartbeat.stop()
        # The work folder goes before the record says the job ended: whoever waits on the record finds it gone.
        if config.debug and status is not JobStatus.CANCELLED:
            log.info("debug is on, keeping the work dir %s", work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
        if not store.finish(job_id, status, result=result, error=error, attempt=attempt):
            log.warning("attempt %d ended (%s) but no longer owns the job; its end is not recorded", attempt, status.value)
            return "superseded"
        log.info("job %s after attempt %d", status.value, attempt)
        runner.notify(job_id, store, settings)
        return status.value


# --- hooks in the worker's main process -------------------------------------------------------------------------
def connect_worker_signals() -> None:
    """Stamp jobs as received (so a lost worker's jobs show), and record cancelled jobs whose process was killed."""
    from celery import signals

    signals.task_received.connect(_on_received, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)


def _job_id_of(request: Any) -> str | None:
    args = getattr(request, "args", None) or ()
    return str(args[0]) if args else None


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    job_id = _job_id_of(request)
    if job_id is None:
        return
    try:
        context().store.mark_received(job_id, worker=HOST, pid=os.getpid())
    except Exception:
        log.warning("could not stamp job %s as received", job_id, exc_info=True)


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    job_id = _job_id_of(request)
    if job_id is None or not terminated:
        return
    # Off the consumer's thread (the webhook may take a while), and a moment later: the pool forks the killed
    # process's replacement now, and a fork must not catch another thread half-way through anything.
    timer = threading.Timer(1.0, finalize_killed_cancel, args=(job_id, context()))
    timer.daemon = True
    timer.start()


def warm_up() -> None:
    """Load in the worker's main process, before it forks its pool, what its threads (reaper, cancel hook) will use:
    a pool process forked while another thread imports a module would wait for that import forever. The mapping code
    (torch, scvi-tools) is loaded here too, once: every pool process, and each replacement of a lost one, starts with
    it (shared, copy-on-write) instead of spending seconds importing it at its first job."""
    import httpx

    import scarches_api.mapping  # noqa: F401

    ctx = context()
    ctx.store.check()
    ctx.store.stale(ctx.settings.stale_after)
    httpx.Client(timeout=1.0, trust_env=False).close()


def finalize_killed_cancel(job_id: str, ctx: WorkerContext) -> None:
    """The process of a cancelled job was killed (the hard stop): record it cancelled, clean up, tell the caller."""
    with job_context(job_id):
        try:
            remove_work_dirs(ctx.settings, job_id)
            if ctx.store.finish_cancelled(job_id):
                log.info("job cancelled (its process was stopped)")
                runner.notify(job_id, ctx.store, ctx.settings)
        except Exception:
            log.exception("could not record the cancelled job")
