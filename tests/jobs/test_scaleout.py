"""Scale-out mode with real servers: Redis as the broker, PostgreSQL as the job store, `scarches-api worker` processes.

A killed pool process (its message comes back at once) and a killed worker (the reaper re-queues its job) both end
with the job done once; two workers share ten jobs, each run exactly once; a cancel that the job can't honour in time
kills its process; GPU jobs wait in their own queue for a `--gpu` worker.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine_helpers import LONG, PUBLISHED, body, engine_settings, final, outputs, training, wait_for
from live_server import LiveServer
from scarches_api.api import create_app
from scarches_api.config import Settings

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

_redis_dbs = itertools.count(1)


@pytest.fixture
def scaleout_settings(tmp_path: Path, tiny_store: Path, redis_server, postgres_url: str) -> Settings:
    """Redis (a database of its own per test) and PostgreSQL (likewise); no embedded worker."""
    return engine_settings(
        tmp_path, tiny_store,
        SCARCHES_BROKER_URL=redis_server.url.rsplit("/", 1)[0] + f"/{next(_redis_dbs) % 16}",
        SCARCHES_DATABASE_URL=postgres_url,
    )


@pytest.fixture
def api(scaleout_settings: Settings) -> Iterator[LiveServer]:
    app = create_app(scaleout_settings)
    assert app.state.engine.embedded is None
    with LiveServer(app) as live:
        yield live


@pytest.mark.fault("SIGKILL of the pool process running the job, then of the whole worker")
def test_killed_pool_process_and_killed_worker_both_end_with_one_done_job(
    api, scaleout_settings, workers, receiver, tiny_store, record_property
) -> None:
    worker = workers(scaleout_settings).wait_ready()
    with api.client() as client:
        job_id = client.post("/query", json=body("redis-kill", receiver, scvi_max_epochs_query=15)).json()["job_id"]
        wait_for(client, job_id, training(2), timeout=180, what="training")
        # 1. Only the process running the job dies: Celery puts its message back (reject on a lost worker) and the
        #    worker's new pool process takes the job over (same host, the old process is gone) — or, whichever comes
        #    first, the reaper re-queues it when its heartbeat is stale; the later message finds the job taken.
        os.kill(api.app.state.job_store.get(job_id).pid, signal.SIGKILL)
        second = wait_for(client, job_id, lambda j: j["attempts"] == 2 and training(2)(j), timeout=180,
                          what="re-run after the pool process was killed")
        # 2. The whole worker dies (the machine went away): the reaper re-queues the job once its heartbeat is
        #    stale, and a worker started later runs it to the end.
        worker.kill()
        workers(scaleout_settings).wait_ready()
        job = wait_for(client, job_id, final, timeout=240, what="final after the worker was killed")
    assert second["status"] == "running"
    assert job["status"] == "done" and job["attempts"] == 3, job
    record = api.app.state.job_store.get(job_id)
    assert record.published_attempt == 3 and record.requeues >= 1
    assert outputs(tiny_store, "redis-kill") == PUBLISHED
    time.sleep(1.0)  # a late duplicate delivery would show here
    calls = receiver.wait_for("/hook/redis-kill", timeout=30)
    assert len(calls) == 1 and calls[0].json["status"] == "done"
    record_property("observed", f"after pool kill: {second['status']} (attempt {second['attempts']}); "
                                f"after worker kill: {job['status']} after {job['attempts']} attempts, "
                                f"{record.requeues} requeue(s), published attempt {record.published_attempt}, "
                                f"{len(calls)} webhook call(s)")


def test_two_workers_share_ten_jobs_each_run_once(api, scaleout_settings, workers, receiver, tiny_store) -> None:
    started = [workers(scaleout_settings) for _ in range(2)]
    for worker in started:
        worker.wait_ready()
    tags = [f"redis-ten-{n}" for n in range(10)]
    with api.client() as client:
        ids = [client.post("/query", json=body(tag, receiver)).json()["job_id"] for tag in tags]
        jobs = [wait_for(client, job_id, final, timeout=300, what="final") for job_id in ids]
        done = client.get("/jobs", params={"status": "done", "limit": 20}).json()
    assert [job["status"] for job in jobs] == ["done"] * 10, [job["error"] for job in jobs]
    assert [job["attempts"] for job in jobs] == [1] * 10
    assert done["count"] == 10 and {job["id"] for job in done["data"]} == set(ids)
    store = api.app.state.job_store
    assert len({store.get(job_id).pid for job_id in ids}) >= 2  # both workers took jobs
    for tag, job_id in zip(tags, ids):
        assert outputs(tiny_store, tag) == PUBLISHED
        (call,) = receiver.wait_for(f"/hook/{tag}", timeout=30)
        assert call.json["job_id"] == job_id and call.json["status"] == "done"
    # Every worker log line is a JSON object; those about a job carry its id.
    lines = [json.loads(line) for w in started for line in w.log().splitlines() if line.startswith("{")]
    about = [line for line in lines if "attempt 1 started" in line["message"]]
    assert sorted(line["job_id"] for line in about) == sorted(ids)


@pytest.mark.fault("cancel that the job cannot honour in time (SCARCHES_CANCEL_GRACE=0)")
def test_a_cancel_the_job_cannot_honour_in_time_kills_its_process(
    tmp_path, tiny_store, redis_server, postgres_url, workers, receiver, record_property
) -> None:
    settings = engine_settings(
        tmp_path, tiny_store, SCARCHES_BROKER_URL=redis_server.url.rsplit("/", 1)[0] + f"/{next(_redis_dbs) % 16}",
        SCARCHES_DATABASE_URL=postgres_url, SCARCHES_CANCEL_GRACE=0,
    )
    worker = workers(settings).wait_ready()
    with LiveServer(create_app(settings)) as api, api.client() as client:
        job_id = client.post("/query", json=body("redis-hard-cancel", receiver, **LONG)).json()["job_id"]
        wait_for(client, job_id, training(1), timeout=180, what="training")
        answer = client.delete(f"/jobs/{job_id}")
        assert answer.status_code in (200, 202)
        job = wait_for(client, job_id, final, timeout=60, what="cancelled")
        # The worker lives on and takes the next job.
        after = client.post("/query", json=body("redis-after-cancel", None)).json()["job_id"]
        next_job = wait_for(client, after, final, timeout=180, what="final")
    assert job["status"] == "cancelled" and job["error"]["kind"] == "cancelled", job
    record = api.app.state.job_store.get(job_id)
    assert record.hard_stop_at is not None and record.epoch < record.epochs
    (hook,) = receiver.wait_for("/hook/redis-hard-cancel", timeout=30)
    assert hook.json["status"] == "cancelled"
    assert outputs(tiny_store, "redis-hard-cancel") == []
    assert not list(Path(settings.work_dir).glob(f"{job_id}*"))
    assert next_job["status"] == "done" and worker.process.poll() is None
    hard_stop = "set" if record.hard_stop_at else "unset"
    record_property("observed", f"DELETE {answer.status_code}; job {job['status']} at epoch "
                                f"{record.epoch}/{record.epochs}, hard_stop_at {hard_stop}; "
                                f"webhook {hook.json['status']}; worker alive: {worker.process.poll() is None}; "
                                f"next job {next_job['status']}")


def test_gpu_jobs_wait_in_their_own_queue_for_a_gpu_worker(api, scaleout_settings, workers, tiny_store) -> None:
    import redis

    broker = redis.Redis.from_url(scaleout_settings.broker_url)
    workers(scaleout_settings).wait_ready()  # a CPU worker: never takes the GPU job
    with api.client() as client:
        job_id = client.post("/query", json=body("redis-gpu", None, use_gpu=True)).json()["job_id"]
        time.sleep(2.0)
        waiting = client.get(f"/jobs/{job_id}").json()
        assert (waiting["status"], waiting["queue"]) == ("queued", "scarches-gpu")
        assert broker.llen("scarches-gpu") == 1 and broker.llen("scarches") == 0
        metrics = client.get("/metrics").text
        assert 'scarches_queue_length{queue="scarches-gpu"} 1.0' in metrics
        workers(scaleout_settings, "--gpu").wait_ready()  # on a machine without a GPU it maps on the CPU
        job = wait_for(client, job_id, final, timeout=180, what="final")
    assert job["status"] == "done" and outputs(tiny_store, "redis-gpu") == PUBLISHED
