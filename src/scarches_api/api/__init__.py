"""The REST service of the original contract: /liveness, /readiness, /query (sync and async), /jobs."""

from scarches_api.api.app import create_app

__all__ = ["create_app"]
