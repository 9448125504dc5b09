"""The job store's ownership rules, on SQLite and on a real PostgreSQL server: who may run, publish and end a job."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from scarches_api.jobs.models import JobStatus
from scarches_api.jobs.store import JobStore

HOST = "host-a"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        store = JobStore(tmp_path / "jobs.sqlite")
    else:
        store = JobStore(request.getfixturevalue("postgres_url"))
    yield store
    store.close()


def claim(store: JobStore, job_id: str, *, pid: int = 100, host: str = HOST, alive: bool = True, stale_after: float = 60):
    return store.claim(job_id, worker=host, pid=pid, stale_after=stale_after, max_attempts=3, alive=lambda _pid: alive)


def test_a_job_runs_once_and_a_done_job_never_again(store: JobStore) -> None:
    job = store.create({"model": "scVI"}, queue="scarches")
    first = claim(store, job.id)
    assert first.granted and first.attempt == 1 and first.job.status is JobStatus.RUNNING
    # A second delivery while the first attempt is alive (fresh heartbeat, live process) is refused.
    assert not claim(store, job.id, pid=200).granted
    assert not claim(store, job.id, host="host-b", pid=100).granted
    assert store.progress(job.id, "train", attempt=1) == "ok"
    assert store.progress(job.id, epoch=3, epochs=10, attempt=1) == "ok"
    assert store.get(job.id).progress == 0.3
    assert store.begin_publish(job.id, 1) == "ok"
    assert store.finish(job.id, JobStatus.DONE, result={"timings": {"train": 1.5, "embed": 0.2}}, attempt=1)
    again = claim(store, job.id, pid=300, stale_after=0)
    assert not again.granted and again.reason == "already done"
    done = store.get(job.id)
    assert done.status is JobStatus.DONE and done.attempts == 1 and done.published_attempt == 1
    stages = store.stage_histogram((1.0, 2.0))
    assert stages["train"] == ([0, 1], 1, 1.5) and stages["embed"] == ([1, 1], 1, 0.2)
    assert store.duration_histogram((60.0,))["done"][1] == 1


def test_a_lost_attempt_is_taken_over_and_can_no_longer_write(store: JobStore) -> None:
    job = store.create({})
    assert claim(store, job.id, pid=100).attempt == 1
    # Same host, process gone: taken over at once (a killed pool process whose message came back).
    second = claim(store, job.id, pid=200, alive=False)
    assert second.attempt == 2
    # Another host, heartbeat stale: taken over.
    time.sleep(0.05)
    third = claim(store, job.id, host="host-b", pid=300, stale_after=0.01)
    assert third.attempt == 3
    # The earlier attempts find the job gone: no progress, no publishing, no end recorded.
    assert store.progress(job.id, "train", attempt=2) == "lost"
    assert store.heartbeat(job.id, 2) is False
    assert store.begin_publish(job.id, 1) == "lost"
    assert not store.finish(job.id, JobStatus.DONE, result={}, attempt=2)
    assert store.finish(job.id, JobStatus.DONE, result={}, attempt=3)
    assert store.get(job.id).attempts == 3


def test_attempts_are_bounded(store: JobStore) -> None:
    job = store.create({})
    for attempt in (1, 2, 3):
        assert claim(store, job.id, pid=attempt, alive=False).attempt == attempt
    exhausted = claim(store, job.id, pid=9, alive=False)
    assert not exhausted.granted and exhausted.reason == "exhausted"
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error["kind"] == "interrupted"


def test_cancel_queued_running_publishing_and_final(store: JobStore) -> None:
    queued = store.create({})
    assert store.request_cancel(queued.id) == "cancelled"
    assert store.get(queued.id).status is JobStatus.CANCELLED
    assert claim(store, queued.id).reason == "already cancelled"

    running = store.create({})
    claim(store, running.id)
    assert store.request_cancel(running.id) == "requested"
    assert store.get(running.id).cancel_requested
    assert store.progress(running.id, epoch=1, epochs=5, attempt=1) == "cancel"
    assert store.begin_publish(running.id, 1) == "cancel"
    assert store.finish(running.id, JobStatus.CANCELLED, attempt=1)
    assert store.request_cancel(running.id) == "final"

    publishing = store.create({})
    claim(store, publishing.id)
    assert store.begin_publish(publishing.id, 1) == "ok"
    assert store.request_cancel(publishing.id) == "publishing"

    killed = store.create({})
    claim(store, killed.id)
    store.request_cancel(killed.id)
    assert [j.id for j in store.overdue_cancels(-1)] == [killed.id]
    assert store.mark_hard_stop(store.get(killed.id)) and not store.overdue_cancels(-1)
    assert store.finish_cancelled(killed.id) and not store.finish_cancelled(killed.id)


def test_two_reapers_requeue_a_stale_job_once(store: JobStore) -> None:
    job = store.create({})
    claim(store, job.id)
    time.sleep(0.05)
    stale = store.stale(0.01)
    assert [j.id for j in stale] == [job.id]
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(store.requeue(stale[0], f"{job.id}.r1"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(wins) == [False, False, False, True]
    requeued = store.get(job.id)
    assert (requeued.status, requeued.task_id, requeued.requeues, requeued.heartbeat_at) == (
        JobStatus.QUEUED, f"{job.id}.r1", 1, None,
    )
    assert store.stale(0.0) == []  # a queued job without a holder is nobody's to reap
    store.mark_received(job.id, worker=HOST, pid=1)
    assert claim(store, job.id).attempt == 2


def test_listing_pages_newest_first_and_filters_by_status(store: JobStore) -> None:
    ids = [store.create({"n": n}).id for n in range(5)]
    store.request_cancel(ids[1])
    page, count = store.list(limit=2, offset=1)
    assert count == 5 and [j.id for j in page] == [ids[3], ids[2]]
    cancelled, count = store.list(status=JobStatus.CANCELLED)
    assert count == 1 and cancelled[0].id == ids[1]
    assert store.counts() == {"queued": 4, "cancelled": 1}
    assert store.queued_by_queue() == {"scarches": 4}


def test_records_of_the_earlier_sqlite_store_are_imported(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, mode TEXT NOT NULL, stage TEXT, epoch INTEGER,"
        " epochs INTEGER, config TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
        " updated_at TEXT, result TEXT, error TEXT, webhook_delivery TEXT);"
        "INSERT INTO jobs VALUES ('old-done', 'done', 'sync', 'publish', 2, 2, '{}', '2024-01-01T00:00:00+00:00',"
        " '2024-01-01T00:00:01+00:00', '2024-01-01T00:00:09+00:00', NULL, '{\"output_path\": \"x\"}', NULL, NULL);"
        "INSERT INTO jobs VALUES ('old-queued', 'queued', 'async', NULL, NULL, NULL, '{}',"
        " '2024-01-02T00:00:00+00:00', NULL, NULL, NULL, NULL, NULL, NULL);"
    )
    db.commit()
    db.close()
    store = JobStore(path)
    assert store.get("old-done").result == {"output_path": "x"} and store.get("old-done").status is JobStatus.DONE
    assert store.get("old-queued").status is JobStatus.FAILED  # its runner thread died with the old process
    assert [j.id for j in store.list()[0]] == ["old-queued", "old-done"]


def test_an_idempotency_key_creates_one_job_even_when_racing(store: JobStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from scarches_api.jobs.errors import JobConflictError

    config = {"query_data": "q.h5ad", "output_path": "out.tsv"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(lambda _: store.create_once(config, key="k-1"), range(8)))
    assert len({job.id for job, _ in made}) == 1 and sum(created for _, created in made) == 1
    assert store.job_for_key("k-1", config).id == made[0][0].id
    assert store.job_for_key("k-2", config) is None
    with pytest.raises(JobConflictError, match="another configuration"):
        store.create_once({**config, "output_path": "other.tsv"}, key="k-1")
    assert store.list()[1] == 1
