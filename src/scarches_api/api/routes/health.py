"""Liveness (the process answers) and readiness (its storage and job store answer too)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from scarches_api.api.deps import JobStoreDep, StorageDep
from scarches_api.api.schemas import ErrorPublic, ReadinessPublic
from scarches_api.errors import ScarchesError

router = APIRouter(tags=["health"])


@router.get("/liveness", response_class=PlainTextResponse)
async def liveness() -> str:
    """Answer `up` while the process serves (the original's probe)."""
    return "up"


@router.get("/readiness", response_model=ReadinessPublic, responses={503: {"model": ErrorPublic}})
async def readiness(storage: StorageDep, store: JobStoreDep) -> ReadinessPublic | JSONResponse:
    """Answer 200 when the storage and the job store can be reached, else 503 saying which failed."""
    try:
        await run_in_threadpool(storage.check)
        await run_in_threadpool(store.check)
    except ScarchesError as exc:
        return JSONResponse({**exc.to_dict(), "storage": storage.describe()}, status_code=503)
    except Exception as exc:  # e.g. sqlite3.OperationalError: not ready, and not a 500 either
        return JSONResponse({"error": f"not ready: {type(exc).__name__}: {exc}", "kind": "storage"}, status_code=503)
    return ReadinessPublic(status="ready", storage=storage.describe())
