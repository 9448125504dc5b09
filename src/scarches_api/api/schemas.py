"""Response bodies, named by role. Request bodies are QueryConfig (scarches_api.config)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scarches_api.jobs.models import Job, JobStatus


class ErrorPublic(BaseModel):
    """Every error answer: ``error`` is the message (the original's only field); ``kind`` says which sort."""

    error: str = Field(description="What went wrong and what to do next.")
    kind: str = Field(description="config, input, model, not_found, storage, internal, http, interrupted.")
    details: dict[str, Any] | None = Field(None, description="Machine-readable particulars, e.g. the offending keys.")
    error_id: str | None = Field(None, description="For kind 'internal': the id to look for in the service's logs.")
    job_id: str | None = Field(None, description="The job the error belongs to, when one was created.")


class QueryAccepted(BaseModel):
    """The used configuration (every QueryConfig key, defaults merged in) plus the job's id and state.

    For a sync query it comes when the job is done and also carries ``result`` and ``webhook_delivery``; for an async one it
    comes at once with status ``queued``.
    """

    model_config = ConfigDict(extra="allow")

    job_id: str = Field(description="Id of the job; GET /jobs/{job_id} tells its state.")
    status: JobStatus = Field(description="queued (async) or done (sync).")
    result: dict[str, Any] | None = Field(None, description="Keys written (output_path, model_path), a summary, timings.")
    webhook_delivery: dict[str, Any] | None = Field(None, description="How the webhook call went (sync only).")


class JobPublic(BaseModel):
    """A job's record."""

    id: str
    status: JobStatus = Field(description="queued, running, done, failed or cancelled.")
    mode: str = Field(description="sync or async.")
    queue: str = Field(description="The queue it was sent to: scarches (CPU) or scarches-gpu (use_gpu).")
    stage: str | None = Field(
        None, description="fetch, check, reference, align, surgery, train, predict, embed, write, publish."
    )
    epoch: int | None = Field(None, description="Epochs finished in the current (or last) training stage.")
    epochs: int | None = Field(None, description="Epochs that training stage runs at most.")
    progress: float | None = Field(None, description="epoch / epochs: share (0..1) of that training stage done.")
    attempts: int = Field(0, description="Times a worker started the job (more than 1 after a lost worker).")
    worker: str | None = Field(None, description="Host of the worker that runs (or ran) the last attempt.")
    cancel_requested: bool = Field(False, description="DELETE /jobs/{id} was called; the job stops at its next epoch or stage.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    config: dict[str, Any] = Field(description="The used configuration.")
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    webhook_delivery: dict[str, Any] | None = Field(
        None, description="How the webhook call went: ok, status_code, error, attempts (null until it was called)."
    )

    @classmethod
    def of(cls, job: Job) -> "JobPublic":
        return cls.model_validate(job.to_dict())


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    data: list[JobPublic]
    count: int = Field(description="How many jobs match in all.")


class ReadinessPublic(BaseModel):
    status: str = Field(description="'ready'.")
    storage: str = Field(description="Where inputs and outputs live.")
