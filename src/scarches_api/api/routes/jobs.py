"""Job records: one by id, or a page of them."""

from __future__ import annotations

from fastapi import APIRouter, Query

from scarches_api.api.deps import JobStoreDep
from scarches_api.api.schemas import ErrorPublic, JobPublic, JobsPublic
from scarches_api.jobs.models import JobStatus

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
    """A job's status, stage, epoch progress, timestamps, result keys, error and webhook outcome."""
    return JobPublic.of(store.get(job_id))
