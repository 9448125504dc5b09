"""Thin HTTP routes; the work happens in ``scarches_api.jobs``."""
