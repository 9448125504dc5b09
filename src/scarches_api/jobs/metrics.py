"""Prometheus metrics, read from the job store at each scrape (so they cover every worker on every machine).

scarches_jobs{status}                     jobs by status (gauge)
scarches_queue_length{queue}              jobs waiting for a worker, per queue (gauge)
scarches_job_duration_seconds{status}     started→finished of the last attempt of ended jobs (histogram)
scarches_stage_duration_seconds{stage}    mapping stages of done jobs (histogram)
scarches_job_attempts_total               attempts started, re-runs after a lost worker included (counter)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from scarches_api.jobs.models import JobStatus
from scarches_api.jobs.store import JobStore, jobs

JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
STAGE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class JobCollector:
    def __init__(self, store: JobStore, queues: tuple[str, ...]) -> None:
        self.store = store
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        by_status = GaugeMetricFamily("scarches_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        waiting = self.store.queued_by_queue()
        queue = GaugeMetricFamily("scarches_queue_length", "Jobs queued and not yet started, per queue.", labels=["queue"])
        for name in sorted(set(self.queues) | set(waiting)):
            queue.add_metric([name], waiting.get(name, 0))
        yield queue
        yield _histogram(
            "scarches_job_duration_seconds", "Seconds from start to end of a job's last attempt.", "status",
            self.store.duration_histogram(JOB_BUCKETS), JOB_BUCKETS,
        )
        yield _histogram(
            "scarches_stage_duration_seconds", "Seconds per mapping stage of done jobs.", "stage",
            self.store.stage_histogram(STAGE_BUCKETS), STAGE_BUCKETS,
        )
        attempts = CounterMetricFamily("scarches_job_attempts", "Job attempts started (re-runs included).")
        attempts.add_metric([], _sum_attempts(self.store))
        yield attempts


def _histogram(name: str, doc: str, label: str, data: dict[str, Any], buckets: tuple[float, ...]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, (cumulative, count, total) in sorted(data.items()):
        points = [(_bound(b), float(n)) for b, n in zip(buckets, cumulative)] + [("+Inf", float(count))]
        family.add_metric([value], points, sum_value=total)
    return family


def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


def _sum_attempts(store: JobStore) -> int:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.attempts), 0))).scalar_one())


def registry_for(store: JobStore, queues: tuple[str, ...]) -> CollectorRegistry:
    """A registry of its own per app (several apps live in one test process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(store, queues))
    return registry
