"""Mapping jobs: durable records (SQLAlchemy: SQLite or PostgreSQL), run by Celery workers (embedded or scaled out).

models (the record), store (the database), runner (what a job does), tasks (the Celery task: one attempt),
celery_app (the Celery configuration), engine (the API's side: submit, wait, cancel, the embedded worker), reaper
(lost jobs back to the queue), worker (``scarches-api worker``), metrics (Prometheus).
"""

from scarches_api.jobs.errors import JobCancelled, JobConflictError, JobInterrupted, JobSuperseded
from scarches_api.jobs.models import Job, JobStatus
from scarches_api.jobs.store import JobStore

__all__ = [
    "Job", "JobCancelled", "JobConflictError", "JobInterrupted", "JobStatus", "JobStore", "JobSuperseded",
]
