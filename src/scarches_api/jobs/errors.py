"""Exceptions of the job engine: how a running attempt is told to stop, and the 409 of a job that can't be changed."""

from __future__ import annotations

from scarches_api.errors import ScarchesError


class JobInterrupted(Exception):
    """Raised inside a running attempt (from its progress callback) to stop it between epochs or stages."""


class JobCancelled(JobInterrupted):
    """The job was cancelled (DELETE /jobs/{id}): the attempt stops, publishes nothing and records ``cancelled``."""


class JobSuperseded(JobInterrupted):
    """Another attempt owns the job now (this one was taken for lost): stop quietly, touch neither record nor output."""


class JobConflictError(ScarchesError):
    """The job is in a state that does not allow the change (e.g. cancelling a finished job)."""

    status_code = 409
    kind = "conflict"
