"""Starting a job worker: ``scarches-api worker`` on any machine, or the API's embedded child (the same command).

The worker's main process also runs a reaper (lost jobs are re-queued even when no API process is up) and, for the
embedded worker, holds a lock so that one worker serves a machine's embedded broker however many API processes run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from scarches_api.config import Settings
from scarches_api.jobs.models import CPU_QUEUE, GPU_QUEUE

log = logging.getLogger(__name__)

EXIT_LOCKED = 3  # the embedded worker's lock is held by another worker


def embedded_lock_path(settings: Settings) -> Path:
    from scarches_api.jobs.celery_app import broker_dir

    return broker_dir(settings) / "embedded-worker.lock"


def try_lock(path: Path) -> IO[Any] | None:
    """An exclusive lock on ``path`` (held while the returned file stays open), or None when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def run_worker(
    settings: Settings,
    *,
    queues: list[str] | None = None,
    gpu: bool = False,
    concurrency: int | None = None,
    embedded: bool = False,
    loglevel: str = "INFO",
) -> int:
    """Run a Celery worker in the foreground until it is stopped (SIGTERM: finish running jobs; SIGQUIT: at once)."""
    from celery import signals

    from scarches_api.jobs import tasks
    from scarches_api.jobs.celery_app import make_celery, worker_concurrency
    from scarches_api.jobs.reaper import Reaper
    from scarches_api.logging_setup import configure_logging

    configure_logging(settings.log_format, loglevel)
    signals.setup_logging.connect(lambda **_: None, weak=False)  # keep ours; Celery must not replace it
    lock = None
    if embedded:
        lock = try_lock(embedded_lock_path(settings))
        if lock is None:
            log.info("another embedded worker serves %s; not starting a second one", embedded_lock_path(settings))
            return EXIT_LOCKED
    # The embedded worker is the machine's only one: it takes GPU jobs too (on the GPU when there is one).
    queues = queues or ([CPU_QUEUE, GPU_QUEUE] if embedded else [GPU_QUEUE] if gpu else [CPU_QUEUE])
    concurrency = concurrency or worker_concurrency(settings)
    tasks.configure(settings)
    tasks.warm_up()
    tasks.connect_worker_signals()
    app = make_celery(settings)
    reaper = Reaper(settings, app, tasks.context)

    def on_ready(**_: Any) -> None:
        reaper.start()

    def on_shutdown(**_: Any) -> None:
        reaper.stop()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    parent = os.environ.get("SCARCHES_EMBEDDED_PARENT")
    if parent:
        _watch_parent(int(parent))
    kind = "gpu" if gpu else "embedded" if embedded else "cpu"
    hostname = f"scarches-{kind}-{os.getpid()}@{socket.gethostname()}"
    log.info("worker %s: queues %s, concurrency %d, broker %s", hostname, ",".join(queues), concurrency,
             app.conf.broker_url.split("@")[-1])
    argv = [
        "worker", f"--hostname={hostname}", f"--queues={','.join(queues)}", f"--concurrency={concurrency}",
        "--pool=prefork", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        reaper.stop()
        if lock is not None:
            lock.close()
    return 0


def _watch_parent(parent: int) -> None:
    """An embedded worker stops (warm: running jobs finish) when the API process that started it is gone."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log.warning("the API process %d that started this worker is gone; stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main_command(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m scarches_api.jobs.worker`
    return run_worker(Settings(), embedded="--embedded" in (argv or sys.argv[1:]))
