"""The Celery application: one configuration for both modes, only the URLs differ.

- embedded (default): the ``filesystem://`` broker in SCARCHES_BROKER_DIR (queue files, control folder for revoke,
  0.1 s polling) and a ``db+sqlite`` result backend; the API starts the worker as a child process.
- scale-out: SCARCHES_BROKER_URL=redis://... (results in the same Redis), jobs in PostgreSQL
  (SCARCHES_DATABASE_URL); ``scarches-api worker`` on each machine, ``--gpu`` for the GPU queue.

Settings measured to matter: late acks and rejecting on a lost worker (a killed process's job is delivered again),
prefetch 1 (a busy worker does not hold jobs another could run), started-state tracking, and the prefork pool (the
solo pool can't terminate a job on revoke).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from scarches_api.config import QueryConfig, Settings
from scarches_api.jobs.models import CPU_QUEUE, GPU_QUEUE
from scarches_api.jobs.store import database_url

TASK_NAME = "scarches.run_job"


def is_embedded(settings: Settings) -> bool:
    """True when the job queue is the embedded filesystem broker (no broker server)."""
    return not settings.broker_url or settings.broker_url.startswith("filesystem://")


def wants_embedded_worker(settings: Settings) -> bool:
    return settings.embedded_worker if settings.embedded_worker is not None else is_embedded(settings)


def broker_dir(settings: Settings) -> Path:
    return Path(settings.broker_dir or Path(settings.jobs_db).parent / "broker").expanduser().resolve()


def job_database(settings: Settings) -> str:
    """The job store's SQLAlchemy URL: SCARCHES_DATABASE_URL, else the SQLite file SCARCHES_JOBS_DB."""
    return database_url(settings.database_url or settings.jobs_db)


def worker_concurrency(settings: Settings) -> int:
    return settings.worker_concurrency or max(1, (os.cpu_count() or 1) // 2)


def queue_for(config: dict[str, Any] | QueryConfig) -> str:
    """GPU jobs (``use_gpu``) go to their own queue, taken by workers started with ``--gpu``."""
    use_gpu = config.use_gpu if isinstance(config, QueryConfig) else bool(config.get("use_gpu"))
    return GPU_QUEUE if use_gpu else CPU_QUEUE


def embedded_folders(settings: Settings) -> dict[str, Path]:
    root = broker_dir(settings)
    return {"queue": root / "queue", "processed": root / "processed", "control": root / "control", "root": root}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (not the global current app: tests and the API may hold several)."""
    app = Celery("scarches_api", set_as_current=False)
    conf: dict[str, Any] = dict(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        worker_pool="prefork",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=CPU_QUEUE,
        task_queues=(Queue(CPU_QUEUE), Queue(GPU_QUEUE)),
        task_create_missing_queues=True,
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        enable_utc=True,
    )
    if is_embedded(settings):
        folders = embedded_folders(settings)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        from scarches_api.jobs.fs_transport import SCHEME  # registers the transport with kombu

        conf.update(
            # kombu's filesystem transport, with message files renamed into place once written (jobs/fs_transport.py).
            broker_url=f"{SCHEME}://",
            broker_transport_options={
                # One folder both ways: producers (the API) write where the worker reads.
                "data_folder_in": str(folders["queue"]),
                "data_folder_out": str(folders["queue"]),
                # Taken messages are renamed into this folder (same file system: atomic, so two workers never both
                # take one) and removed by the reaper later.
                "store_processed": True,
                "processed_folder": str(folders["processed"]),
                "control_folder": str(folders["control"]),  # fanout tables: revoke reaches the worker
                "polling_interval": 0.1,
            },
            result_backend=f"db+sqlite:///{folders['root'] / 'results.sqlite'}",
        )
    else:
        url = settings.broker_url
        conf.update(broker_url=url, result_backend=url if url.startswith(("redis://", "rediss://")) else None)
        if url.startswith(("redis://", "rediss://", "sentinel://")):
            # A job running longer than this is delivered again while it runs: keep it above the longest job.
            options = {"visibility_timeout": settings.visibility_timeout}
            conf.update(broker_transport_options=options, result_backend_transport_options=options)
    app.conf.update(conf)
    from scarches_api.jobs import tasks

    tasks.register(app)
    return app
