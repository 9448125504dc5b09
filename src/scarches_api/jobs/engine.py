"""The API's side of the job engine: submit, wait, cancel; the reaper thread; the embedded worker it supervises."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio

from scarches_api.config import Settings
from scarches_api.errors import ScarchesError
from scarches_api.jobs.celery_app import (
    TASK_NAME,
    embedded_folders,
    is_embedded,
    make_celery,
    queue_for,
    wants_embedded_worker,
    worker_concurrency,
)
from scarches_api.jobs.errors import JobConflictError
from scarches_api.jobs.models import FINAL, Job, JobStatus
from scarches_api.jobs.reaper import Reaper
from scarches_api.jobs.store import JobStore
from scarches_api.jobs.worker import EXIT_LOCKED, embedded_lock_path, try_lock

log = logging.getLogger(__name__)


class QueueUnavailableError(ScarchesError):
    status_code = 503
    kind = "unavailable"


@dataclass
class _StoreContext:
    store: JobStore


class JobEngine:
    """Jobs for one API process: records in ``store``, messages through Celery, an embedded worker when configured."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.celery = make_celery(settings)
        self.reaper = Reaper(settings, self.celery, lambda: _StoreContext(self.store), send=self._resend)
        self.embedded = EmbeddedWorker(settings) if wants_embedded_worker(settings) else None

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.reaper.start()
        if self.embedded is not None:
            # The queues' routing tables exist before the first request: with the filesystem broker, many requests
            # sending at once to a queue nobody has declared yet race to create its table.
            with self.celery.connection_for_write() as conn:
                for queue in self.celery.conf.task_queues:
                    queue(conn.default_channel).declare()
            self.embedded.start()
            if _queued_messages(self.settings):
                self.embedded.want()  # messages left from before a restart: serve them

    def stop(self) -> None:
        self.reaper.stop()
        if self.embedded is not None:
            self.embedded.stop()

    # --- jobs -------------------------------------------------------------------------------------------------------
    def submit(self, config: dict[str, Any], *, mode: str = "async", idempotency_key: str | None = None) -> Job:
        """Record a job and queue it; a queue that can't be reached fails the job (and answers 503).

        With ``idempotency_key``, a key seen before returns that key's job (queued, running or ended) instead.
        """
        if idempotency_key:
            job, created = self.store.create_once(config, key=idempotency_key, mode=mode, queue=queue_for(config))
            if not created:
                return job
        else:
            job = self.store.create(config, mode=mode, queue=queue_for(config))
        try:
            self.send(job.id, job.queue, job.task_id or job.id)
        except Exception as exc:
            error = {
                "error": f"the job queue ({self.describe_broker()}) can't be reached: {type(exc).__name__}: {exc}",
                "kind": "unavailable",
                "status_code": 503,
            }
            self.store.finish(job.id, JobStatus.FAILED, error=error)
            log.error("job %s: could not be queued", job.id, exc_info=True, extra={"job_id": job.id})
            raise QueueUnavailableError(error["error"], details={"job_id": job.id}) from None
        return self.store.get(job.id)

    def send(self, job_id: str, queue: str, task_id: str) -> None:
        if self.embedded is not None:
            self.embedded.want()
        self.celery.send_task(TASK_NAME, args=[job_id], task_id=task_id, queue=queue, retry=True,
                              retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})

    def _resend(self, job: Job, task_id: str) -> None:
        self.send(job.id, job.queue, task_id)

    def cancel(self, job_id: str) -> tuple[Job, str]:
        """Cancel a queued or running job; returns its record and what happened (see JobStore.request_cancel)."""
        outcome = self.store.request_cancel(job_id)
        job = self.store.get(job_id)
        if outcome == "final" and job.status is not JobStatus.CANCELLED:
            raise JobConflictError(
                f"job {job_id!r} has already ended ({job.status.value}); only queued or running jobs can be cancelled",
                details={"job_id": job_id, "status": job.status.value},
            )
        if outcome == "publishing":
            raise JobConflictError(
                f"job {job_id!r} is writing its results and can no longer be cancelled",
                details={"job_id": job_id, "status": job.status.value, "stage": job.stage},
            )
        task_id = job.task_id or job.id
        try:
            if outcome == "cancelled":
                self.celery.control.revoke(task_id)  # the worker drops the message (the claim would skip it anyway)
            elif outcome == "requested" and self.settings.cancel_grace <= 0 and self.store.mark_hard_stop(job):
                self.celery.control.revoke(task_id, terminate=True, signal="SIGKILL")
        except Exception:
            log.warning("job %s: could not broadcast the revoke", job_id, exc_info=True, extra={"job_id": job_id})
        return job, outcome

    async def wait(self, job_id: str, *, poll: float = 0.2, webhook: bool = True, timeout: float | None = None) -> Job:
        """Wait (without holding a thread) until the job is final and, when it has a webhook, its outcome recorded.

        The webhook outcome is waited for at most its retries' worth of time after the job ended.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: float | None = None
        attempts = int(getattr(self.settings, "webhook_attempts", 3))
        backoff = float(getattr(self.settings, "webhook_backoff", 0.5))
        webhook_budget = attempts * self.settings.webhook_timeout + backoff * 2**attempts * 1.5 + 10
        while True:
            job = await anyio.to_thread.run_sync(self.store.get, job_id)
            if job.status in FINAL:
                ended = ended or time.monotonic()
                if not (webhook and job.config.get("webhook")) or job.webhook_delivery is not None:
                    return job
                if time.monotonic() - ended > webhook_budget:
                    return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            await anyio.sleep(poll)

    def describe_broker(self) -> str:
        if is_embedded(self.settings):
            return f"embedded broker in {embedded_folders(self.settings)['root']}"
        return str(self.celery.conf.broker_url).split("@")[-1]

    def queue_lengths(self) -> dict[str, int]:
        return self.store.queued_by_queue()


def _queued_messages(settings: Settings) -> bool:
    if not is_embedded(settings):
        return False
    try:
        return any(path.suffix == ".msg" for path in embedded_folders(settings)["queue"].iterdir())
    except OSError:
        return False


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (each field under its variable name)."""
    env = dict(os.environ)
    for name, field in Settings.model_fields.items():
        key = field.alias or name.upper()
        value = getattr(settings, name)
        if value is None:
            env.pop(key, None)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif hasattr(value, "get_secret_value"):
            env[key] = value.get_secret_value()
        else:
            env[key] = str(value)
    return env


class EmbeddedWorker:
    """Starts ``scarches-api worker --embedded`` as a child process when the first job comes, restarts it if it dies.

    One per machine: the worker takes a lock in the broker folder, so with several API processes (gunicorn workers)
    only one worker runs; the others' supervisors wait and take over if it goes.
    """

    def __init__(self, settings: Settings, *, restart_delay: float = 1.0) -> None:
        self.settings = settings
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="embedded-worker", daemon=True)
            self._thread.start()

    def want(self) -> None:
        self._wanted.set()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            if not self._wanted.wait(0.5):
                continue
            # Another API process's worker serves this broker (gunicorn runs several): look again later. The worker
            # takes the lock itself; this probe only saves starting a process that would exit at once.
            probe = try_lock(embedded_lock_path(self.settings))
            if probe is None:
                self._stopping.wait(5.0)
                continue
            probe.close()
            command = [sys.executable, "-m", "scarches_api", "worker", "--embedded",
                       "--concurrency", str(worker_concurrency(self.settings))]
            env = worker_env(self.settings)
            env["SCARCHES_EMBEDDED_PARENT"] = str(os.getpid())
            # Its own process group: stopping it reaches its pool processes too.
            self.process = subprocess.Popen(command, env=env, start_new_session=True)
            self.starts += 1
            log.info("embedded worker started (pid %d)", self.process.pid)
            while self.process.poll() is None and not self._stopping.wait(0.2):
                pass
            if self._stopping.is_set():
                return
            code = self.process.returncode
            if code == EXIT_LOCKED:  # another API process's worker took the lock first; check again later
                self._stopping.wait(5.0)
            else:
                log.warning("embedded worker exited with %s; starting it again", code)
                self._stopping.wait(self.restart_delay)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the worker: SIGTERM (warm shutdown: a running job may finish) for ``timeout`` s, then SIGKILL its
        process group (a job killed so is re-queued by the reaper when the service is back)."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)  # the worker stops its pool processes itself
                process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("embedded worker %d did not exit", process.pid)
        if self._thread is not None:
            self._thread.join(timeout=5)
