"""Mapping jobs: their records (SQLite), and the runner that both the sync and the async path go through."""

from scarches_api.jobs.models import Job, JobStatus
from scarches_api.jobs.runner import BackgroundRunner, perform_job, require_keys
from scarches_api.jobs.store import JobStore

__all__ = ["BackgroundRunner", "Job", "JobStatus", "JobStore", "perform_job", "require_keys"]
