"""Settings for a service under test, every folder under one temporary directory (shared by API and job tests)."""

from __future__ import annotations

from pathlib import Path

from scarches_api.config import Settings


def settings_for(tmp: Path, **env: object) -> Settings:
    """Settings with every folder under ``tmp``; ``env`` uses the environment variable names (AWS_BUCKET, ...)."""
    env.setdefault("AWS_BUCKET", None)  # a bucket in the developer's environment must not leak into a local test
    return Settings(
        SCARCHES_DATA_DIR=tmp / "store",
        SCARCHES_WORK_DIR=tmp / "work",
        SCARCHES_JOBS_DB=tmp / "jobs.sqlite",
        SCARCHES_CACHE_DIR=tmp / "cache",
        SCARCHES_WEBHOOK_ALLOW="127.0.0.1/32",
        SCARCHES_WEBHOOK_TIMEOUT=5.0,
        **env,
    )
