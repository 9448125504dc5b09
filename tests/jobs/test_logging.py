"""Structured logs: one JSON object per line, with the job id on every line logged for a job."""

from __future__ import annotations

import io
import json
import logging

from scarches_api.logging_setup import configure_logging, job_context


def test_json_lines_carry_the_job_id() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        configure_logging("json", stream=stream)
        log = logging.getLogger("scarches_api.test")
        log.info("outside")
        with job_context("job-1"):
            log.warning("inside %d", 2, extra={"stage": "train"})
        # Celery's own task lines name the task id (the job id, or <job id>.r<n> after a re-queue).
        logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", {"name": "t", "id": "job-2.r1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line["job_id"]) for line in lines] == [
        ("outside", None), ("inside 2", "job-1"), ("Task t[job-2.r1] received", "job-2"), ("failed", None),
    ]
    assert lines[1]["level"] == "WARNING" and lines[1]["stage"] == "train" and "ValueError: boom" in lines[3]["exc_info"]
