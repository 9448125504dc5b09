"""POST /query: the original contract's one endpoint, sync by default, async with ``"async": true``."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scarches_api.api.deps import EngineDep, SettingsDep, StorageDep
from scarches_api.api.schemas import ErrorPublic, QueryAccepted
from scarches_api.config import QueryConfig, build_config
from scarches_api.errors import ConfigError
from scarches_api.jobs.models import JobStatus
from scarches_api.jobs.runner import check_job_inputs

router = APIRouter(tags=["query"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="A key of the caller's choosing: a repeated POST with the same key returns the same job."),
]

# The body is parsed by hand (any Content-Type is accepted), so the schema is given to OpenAPI explicitly.
_BODY_SCHEMA = QueryConfig.model_json_schema(by_alias=True)
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "A JSON object of QueryConfig keys; every key left out takes its default. "
        "Sent with any Content-Type (the original's caller sends text/plain).",
        "content": {"application/json": {"schema": _BODY_SCHEMA}, "text/plain": {"schema": _BODY_SCHEMA}},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic} for code in (404, 409, 422, 500, 502, 503)
}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body, whatever its Content-Type; an empty body is an empty configuration."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the body is not valid JSON: {exc}", details={"keys": ["(body)"]}) from None
    if isinstance(data, str):
        # Some clients send the configuration JSON-encoded twice (a JSON string holding the object).
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            pass
    if not isinstance(data, dict):
        raise ConfigError(
            f"the body must be a JSON object of configuration keys, not a JSON {type(data).__name__}",
            details={"keys": ["(body)"]},
        )
    return data


@router.post("/query", response_model=QueryAccepted, responses=_ERRORS, openapi_extra=_OPENAPI_BODY)
async def query(
    request: Request, settings: SettingsDep, storage: StorageDep, engine: EngineDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Map query data onto a reference; answer with the used configuration (at once when `async` is true)."""
    config = build_config(parse_body(await request.body()))
    used = config.used()
    mode = "async" if config.async_ else "sync"
    # A repeated request (same Idempotency-Key) gets its first job back, whatever became of its inputs since.
    seen = await run_in_threadpool(engine.store.job_for_key, idempotency_key, used) if idempotency_key else None
    if seen is None:
        await run_in_threadpool(check_job_inputs, config, storage, settings)
    # Sync or async, the job goes to the same queue and workers: durable, visible, cancellable either way.
    job = seen or await run_in_threadpool(engine.submit, used, mode=mode, idempotency_key=idempotency_key)
    if config.async_:
        return QueryAccepted(**used, job_id=job.id, status=job.status)
    # Sync: the caller waits on the open connection while a worker runs the job (no thread is held meanwhile).
    job = await engine.wait(job.id)
    if job.status is not JobStatus.DONE:
        error = dict(job.error or {"error": "the job failed", "kind": "internal", "status_code": 500})
        status_code = int(error.pop("status_code", 500))
        body = {**error, "job_id": job.id, "status": job.status.value, "webhook_delivery": job.webhook_delivery}
        return JSONResponse(body, status_code=status_code)
    return QueryAccepted(**used, job_id=job.id, status=job.status, result=job.result, webhook_delivery=job.webhook_delivery)
