"""Helpers for the job engine tests (fixtures in conftest.py): tiny real data in a local store, real Redis and PostgreSQL, real worker processes.

Jobs here are real mappings through the real task code: a liu_demo query (50 cells) onto a scVI reference bundle
built once per session (the fast path: no reference training and no UMAP, so a job takes seconds even in a fresh
worker process); a job meant to be killed or cancelled mid-way fine-tunes for many epochs so it is caught training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from helpers import wait_for  # noqa: F401 - the engine tests import it from here
from scarches_api.config import Settings
from scarches_api.jobs.engine import worker_env
from webhook_receiver import WebhookReceiver

# Short clocks so that a lost worker is noticed in seconds (production: 5 s heartbeat, 60 s stale).
FAST_CLOCKS = dict(
    SCARCHES_HEARTBEAT_INTERVAL=0.5,
    SCARCHES_STALE_AFTER=4.0,
    SCARCHES_REAPER_INTERVAL=0.5,
    SCARCHES_CANCEL_GRACE=3.0,
    SCARCHES_WEBHOOK_TIMEOUT=5.0,
    SCARCHES_WEBHOOK_ALLOW="127.0.0.1/32",  # the receiver runs on loopback
    SCARCHES_WORKER_CONCURRENCY=1,
)
BUNDLE_KEY = "bundles/tiny-scvi"
TINY = dict(atlas="liu_demo", model="scVI", ref_path=BUNDLE_KEY, scvi_max_epochs_query=1, early_stopping=False)
LONG = dict(TINY, scvi_max_epochs_query=400)  # 20-300 ms per epoch here: long enough to be caught while training


def engine_settings(tmp: Path, store: Path, **env: Any) -> Settings:
    """Settings with the local data folder ``store`` and everything else under ``tmp``; ``env`` by variable name."""
    values: dict[str, Any] = dict(
        AWS_BUCKET=None,
        SCARCHES_DATA_DIR=store,
        SCARCHES_WORK_DIR=tmp / "work",
        SCARCHES_JOBS_DB=tmp / "jobs.sqlite",
        SCARCHES_CACHE_DIR=tmp / "cache",
        **FAST_CLOCKS,
    )
    values.update(env)
    return Settings(**values)


def body(tag: str, receiver: WebhookReceiver | None = None, **overrides: Any) -> dict[str, Any]:
    """A query on the tiny data writing to results/<tag>/, with a webhook at /hook/<tag> when a receiver is given."""
    data = {
        "query_data": "liu/query.h5ad",
        "output_path": f"results/{tag}/cells.tsv",
        "async": True,
        **TINY,
    }
    if receiver is not None:
        data["webhook"] = receiver.url(f"/hook/{tag}")
    data.update(overrides)
    return data


class WorkerProcess:
    """``scarches-api worker`` as a child process in its own process group (so a kill reaches its pool processes)."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        command = [sys.executable, "-m", "scarches_api", "worker", *args]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 90.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.log()[-3000:]}")
            if " ready." in self.log() or "ready." in self.log():
                return self
            time.sleep(0.1)
        raise AssertionError(f"worker not ready within {timeout} s: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: the machine died."""
        kill_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            kill_group(self.process.pid, signal.SIGKILL)  # pool processes left behind, if any
            return
        kill_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        kill_group(self.process.pid, signal.SIGKILL)


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- waiting --------------------------------------------------------------------------------------------------------
def final(job: dict) -> bool:
    return job["status"] in ("done", "failed", "cancelled")


def training(min_epoch: int = 2) -> Callable[[dict], bool]:
    """The job is fine-tuning on the query and has finished ``min_epoch`` epochs."""
    return lambda job: job["status"] == "running" and job["stage"] == "train" and (job["epoch"] or 0) >= min_epoch


# What a finished job publishes under its results folder: the table and, beside it, its reports.
PUBLISHED = ["cells.manifest.json", "cells.report.html", "cells.report.json", "cells.tsv"]


def outputs(store: Path, tag: str) -> list[str]:
    folder = store / "results" / tag
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
