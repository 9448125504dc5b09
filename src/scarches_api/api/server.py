"""Serving the app with gunicorn and uvicorn workers, configured from Settings (no gunicorn.conf.py)."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from scarches_api.config import Settings

log = logging.getLogger(__name__)


def worker_class() -> str:
    """The uvicorn worker for gunicorn: the ``uvicorn-worker`` package, else uvicorn's own (deprecated) module."""
    try:
        import uvicorn_worker  # noqa: F401

        return "uvicorn_worker.UvicornWorker"
    except ImportError:
        return "uvicorn.workers.UvicornWorker"


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn settings: WORKERS processes on HOST:PORT; THREADS is passed on and also bounds sync jobs per worker."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": worker_class(),
        # Sync mappings run in threads, so the event loop keeps answering gunicorn's heartbeat; this is a backstop.
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
    }


class _Service(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Called in each worker after the fork: every worker has its own app, job store connection and runner.
        from scarches_api.api.app import create_app

        return create_app(self.settings)


def serve(settings: Settings | None = None) -> None:
    """Run the service in the foreground until it is stopped (SIGTERM/SIGINT)."""
    settings = settings or Settings()
    from scarches_api.logging_setup import configure_logging

    configure_logging(settings.log_format)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    log.info("starting %d worker(s) on %s:%d", settings.workers, settings.host, settings.port)
    _Service(settings, gunicorn_options(settings)).run()


if __name__ == "__main__":
    serve()
