"""The reaper: finds jobs whose worker was lost and puts them back in the queue; hard-stops overdue cancels.

Runs as a thread in every API process and in every worker's main process; each change is a compare-and-set on the
job's record, so several reapers never re-queue one job twice.

Policy for a lost job (its heartbeat older than SCARCHES_STALE_AFTER): re-queue it under a new task id while it has
attempts left (SCARCHES_MAX_ATTEMPTS), else fail it. Re-queue rather than fail, because a worker is lost for reasons
that have nothing to do with the job (a deploy, a node drained, a SIGKILL), and the task is idempotent: each attempt
works in its own folder and only the attempt that owns the job publishes. Bounded, because a job that itself kills its
worker (out of memory) would otherwise take every worker down in turn. A lost job that was being cancelled is
recorded cancelled instead.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from scarches_api.config import Settings
from scarches_api.jobs import runner
from scarches_api.jobs.celery_app import TASK_NAME, embedded_folders, is_embedded
from scarches_api.jobs.models import Job, JobStatus
from scarches_api.jobs.store import cancelled_error

log = logging.getLogger(__name__)

PROCESSED_MAX_AGE = 3600.0  # seconds an embedded broker's taken message file is kept


class Reaper:
    """``tick()`` does one round; ``start()`` runs rounds every SCARCHES_REAPER_INTERVAL seconds in a thread."""

    def __init__(self, settings: Settings, celery: Any, context: Callable[[], Any], send: Callable[[Job, str], None] | None = None) -> None:
        self.settings = settings
        self.celery = celery
        self._context = context  # -> object with .store (a JobStore for this process)
        self._send = send
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    @property
    def store(self) -> Any:
        return self._context().store

    def start(self) -> "Reaper":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scarches-reaper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval):
            try:
                self.tick()
            except Exception:
                log.warning("reaper round failed", exc_info=True)

    def tick(self) -> dict[str, int]:
        """One round: returns how many jobs were re-queued, failed, cancelled and hard-stopped."""
        counts = {"requeued": 0, "failed": 0, "cancelled": 0, "hard_stopped": 0}
        store, settings = self.store, self.settings
        for job in store.stale(settings.stale_after):
            if job.cancel_requested:
                if store.fail_stale(job, cancelled_error(), JobStatus.CANCELLED):
                    counts["cancelled"] += 1
                    log.info("job %s: lost while being cancelled; recorded cancelled", job.id, extra={"job_id": job.id})
                    self._notify(job.id)
                continue
            if job.status is JobStatus.RUNNING and job.attempts >= settings.max_attempts:
                error = {
                    "error": f"the job's worker was lost {job.attempts} time(s) (killed, out of memory or its machine "
                    "stopped); it was not tried again",
                    "kind": "interrupted",
                    "status_code": 503,
                }
                if store.fail_stale(job, error):
                    counts["failed"] += 1
                    log.warning("job %s: worker lost on its last attempt; failed", job.id, extra={"job_id": job.id})
                    self._notify(job.id)
                continue
            task_id = f"{job.id}.r{job.requeues + 1}"
            if store.requeue(job, task_id):
                counts["requeued"] += 1
                log.warning(
                    "job %s: no heartbeat from %s for %.0f s; re-queued as %s", job.id, job.worker,
                    time.time() - (job.heartbeat_at or 0), task_id, extra={"job_id": job.id},
                )
                self.send(job, task_id)
        for job in store.overdue_cancels(settings.cancel_grace):
            if store.mark_hard_stop(job):
                counts["hard_stopped"] += 1
                log.info("job %s: did not stop within %.0f s of its cancel; killing its process", job.id,
                         settings.cancel_grace, extra={"job_id": job.id})
                self.celery.control.revoke(job.task_id or job.id, terminate=True, signal="SIGKILL")
        self._prune_processed()
        return counts

    def send(self, job: Job, task_id: str) -> None:
        if self._send is not None:
            self._send(job, task_id)
            return
        self.celery.send_task(TASK_NAME, args=[job.id], task_id=task_id, queue=job.queue)

    def _notify(self, job_id: str) -> None:
        threading.Thread(
            target=_safe_notify, args=(runner, job_id, self.store, self.settings), name="reaper-webhook", daemon=True
        ).start()

    def _prune_processed(self) -> None:
        if not is_embedded(self.settings) or time.time() - self._last_prune < 300:
            return
        self._last_prune = time.time()
        limit = time.time() - PROCESSED_MAX_AGE
        folder: Path = embedded_folders(self.settings)["processed"]
        for path in folder.glob("*.msg"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except OSError:
                pass


def _safe_notify(runner: Any, job_id: str, store: Any, settings: Settings) -> None:
    try:
        runner.notify(job_id, store, settings)
    except Exception:
        log.warning("webhook of job %s failed", job_id, exc_info=True)
