"""What routes are handed: the app's settings, storage, job store and job engine (set up by create_app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from scarches_api.config import Settings
from scarches_api.io.storage import Storage
from scarches_api.jobs.engine import JobEngine
from scarches_api.jobs.store import JobStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_job_store(request: Request) -> JobStore:
    return request.app.state.job_store


def get_engine(request: Request) -> JobEngine:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
EngineDep = Annotated[JobEngine, Depends(get_engine)]
