"""Domain errors. Each carries the HTTP status it maps to; the API has one handler for all of them.

Messages name the problem and say what to do next: they reach users verbatim.
"""

from __future__ import annotations

from typing import Any


class ScarchesError(Exception):
    """Base of every error this package raises on purpose."""

    status_code: int = 500
    kind: str = "error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "kind": self.kind}
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(ScarchesError):
    """The configuration has an unknown key, a wrong type or an impossible value."""

    status_code = 422
    kind = "config"

    @classmethod
    def from_validation(cls, exc: Any) -> "ConfigError":
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err.get("loc", ())) or "(body)"
            if err.get("type") == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"key '{key}': {err.get('msg')} (got {err.get('input')!r})")
        keys = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()]
        return cls("invalid configuration: " + "; ".join(problems), details={"keys": keys})


class InputDataError(ScarchesError):
    """The data can't be mapped as given: unreadable, wrong keys, not counts, too few shared genes."""

    status_code = 422
    kind = "input"


class NotFoundError(ScarchesError):
    """A key, file or job that was named does not exist."""

    status_code = 404
    kind = "not_found"


class ModelLoadError(ScarchesError):
    """A pretrained model can't be loaded (wrong type, saved by an incompatible scvi-tools)."""

    status_code = 422
    kind = "model"


class StorageError(ScarchesError):
    """The storage (S3 or local) failed for a reason other than a missing key."""

    status_code = 502
    kind = "storage"
