"""The FastAPI application: settings, storage, job store and job engine wired once; one shape for every error."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scarches_api import __version__
from scarches_api.api.routes import check, health, jobs, metrics, query
from scarches_api.api.security import load_tokens, require_token, startup_warning
from scarches_api.config import Settings
from scarches_api.errors import ScarchesError
from scarches_api.io.storage import Storage, storage_from_settings
from scarches_api.jobs.celery_app import job_database
from scarches_api.jobs.engine import JobEngine
from scarches_api.jobs.metrics import registry_for
from scarches_api.jobs.models import CPU_QUEUE, GPU_QUEUE
from scarches_api.jobs.store import JobStore
from scarches_api.limits import BodySizeLimit

log = logging.getLogger(__name__)

DESCRIPTION = """Maps a single-cell query (.h5ad) onto a reference by scArches surgery (scVI, scANVI, totalVI).

`POST /query` takes the original service's JSON body (any Content-Type); inputs and outputs are S3 keys
(or paths in the local data folder). Errors are `{"error": ..., "kind": ...}`."""


def create_app(
    settings: Settings | None = None, *, storage: Storage | None = None, job_store: JobStore | None = None
) -> FastAPI:
    """Build the service; ``storage`` and ``job_store`` default to what ``settings`` names.

    Jobs run on Celery workers: with the embedded broker (the default) the app starts one as a child process when the
    first job comes (and stops it with the app); with SCARCHES_BROKER_URL they run on `scarches-api worker`s.
    """
    settings = settings or Settings()
    storage = storage or storage_from_settings(settings)
    job_store = job_store or JobStore(job_database(settings))
    engine = JobEngine(settings, job_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if warning := startup_warning(settings):
            log.warning(warning)
        log.info(
            "serving with storage: %s; jobs in %s; queue: %s", storage.describe(), job_store.describe(),
            engine.describe_broker(),
        )
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="scArches API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(require_token)],  # every endpoint but /liveness, when tokens are configured
    )
    app.state.api_tokens = load_tokens(settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.state.settings = settings
    app.state.storage = storage
    app.state.job_store = job_store
    app.state.engine = engine
    app.state.metrics = registry_for(job_store, (CPU_QUEUE, GPU_QUEUE))
    add_error_handlers(app)
    app.include_router(health.router)
    app.include_router(query.router)
    app.include_router(check.router)
    app.include_router(jobs.router)
    app.include_router(metrics.router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Domain errors keep their status; request errors are 422 naming the key; anything else is a 500 with an id."""

    @app.exception_handler(ScarchesError)
    async def domain_error(request: Request, exc: ScarchesError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, keys = [], []
        for err in exc.errors():
            key = ".".join(str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")) or "(body)"
            keys.append(key)
            problems.append(f"key '{key}': {err.get('msg')}")
        return JSONResponse(
            {"error": "invalid request: " + "; ".join(problems), "kind": "config", "details": {"keys": keys}},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "kind": "http"}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log under the id; the caller gets the id only.
        error_id = uuid.uuid4().hex[:12]
        log.error("%s %s failed [error_id=%s]", request.method, request.url.path, error_id, exc_info=exc)
        return JSONResponse({"error": "internal error", "kind": "internal", "error_id": error_id}, status_code=500)
