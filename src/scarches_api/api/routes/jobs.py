"""Job records: one by id, or a page of them; DELETE cancels a queued or running job."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scarches_api.api.deps import EngineDep, JobStoreDep, SettingsDep
from scarches_api.api.schemas import ErrorPublic, JobPublic, JobsPublic
from scarches_api.jobs.models import JobStatus
from scarches_api.jobs.runner import notify

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobsPublic)
def list_jobs(
    store: JobStoreDep,
    limit: int = Query(100, ge=1, le=1000, description="Jobs per page."),
    offset: int = Query(0, ge=0, description="Jobs to skip."),
    status: JobStatus | None = Query(None, description="Only jobs in this state."),
) -> JobsPublic:
    """List jobs, newest first."""
    jobs, count = store.list(limit=limit, offset=offset, status=status)
    return JobsPublic(data=[JobPublic.of(job) for job in jobs], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"model": ErrorPublic}})
def get_job(job_id: str, store: JobStoreDep) -> JobPublic:
    """A job's status, stage, epoch progress, attempts, timestamps, result keys, error and webhook outcome."""
    return JobPublic.of(store.get(job_id))


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses={202: {"model": JobPublic}, 404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}},
)
async def cancel_job(job_id: str, engine: EngineDep, settings: SettingsDep, background: BackgroundTasks) -> JSONResponse:
    """Cancel a job. Queued: it is cancelled at once (200). Running: it stops at its next epoch or stage, or is killed
    after SCARCHES_CANCEL_GRACE seconds (202, `cancel_requested` true; poll GET /jobs/{id}). Either way nothing is
    written at its output keys and its webhook gets `"status": "cancelled"`. A job that ended, or is writing its
    results, answers 409."""
    job, outcome = await run_in_threadpool(engine.cancel, job_id)
    if outcome == "cancelled":
        background.add_task(notify, job_id, engine.store, settings)
    status_code = 200 if job.status is JobStatus.CANCELLED else 202
    return JSONResponse(JobPublic.of(job).model_dump(mode="json"), status_code=status_code)
