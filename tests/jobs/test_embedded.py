"""The embedded mode over real HTTP: the API starts its own Celery worker (filesystem broker, SQLite job store).

Progress while a job runs, paging, /metrics, cancelling a queued and a running job, and a worker SIGKILLed mid-job:
the API restarts its worker, the reaper re-queues the job, and it ends done once, with one published result.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine_helpers import LONG, PUBLISHED, body, engine_settings, final, outputs, training, wait_for
from live_server import LiveServer
from scarches_api.api import create_app
from scarches_api.jobs.tasks import HOST


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[LiveServer]:
    settings = engine_settings(tmp_path_factory.mktemp("embedded"), tiny_store)
    with LiveServer(create_app(settings)) as live:
        yield live


def work_dirs(live: LiveServer, job_id: str) -> list[str]:
    root = Path(live.app.state.settings.work_dir)
    return sorted(p.name for p in root.glob(f"{job_id}*")) if root.exists() else []


def test_a_job_reports_its_progress_and_shows_in_listing_and_metrics(embedded, receiver, tiny_store) -> None:
    with embedded.client() as client:
        # use_gpu: the embedded worker takes the GPU queue too (on a machine without a GPU it maps on the CPU).
        answer = client.post("/query", json=body("emb-progress", receiver, scvi_max_epochs_query=8, use_gpu=True)).json()
        assert answer["status"] == "queued"
        stages, epochs, statuses = set(), set(), []
        job = wait_for(
            client, answer["job_id"],
            lambda j: (stages.add(j["stage"]), epochs.add((j["stage"], j["epoch"], j["epochs"], j["progress"])),
                       statuses.append(j["status"]), final(j))[-1],
            timeout=240, what="final",
        )
        listed = client.get("/jobs", params={"status": "done", "limit": 1}).json()
        metrics = client.get("/metrics")
    assert job["status"] == "done", job
    assert {"train", "publish"} <= stages
    assert any(stage == "train" and epoch and total == 8 for stage, epoch, total, _ in epochs)
    assert all(0 < p <= 1 for *_, p in epochs if p is not None)
    assert statuses[0] in ("queued", "running") and "running" in statuses
    assert (job["attempts"], job["worker"], job["queue"]) == (1, HOST, "scarches-gpu")
    assert job["result"]["output_path"] == "results/emb-progress/cells.tsv"
    assert outputs(tiny_store, "emb-progress") == PUBLISHED
    (hook,) = receiver.wait_for("/hook/emb-progress", timeout=30)
    assert hook.json["status"] == "done" and hook.json["job_id"] == job["id"]

    assert listed["data"][0]["id"] == job["id"] and listed["count"] >= 1
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert int(float(re.search(r'^scarches_jobs\{status="done"\} (\S+)$', text, re.M).group(1))) >= 1
    assert re.search(r'^scarches_job_duration_seconds_count\{status="done"\} [1-9]', text, re.M)
    assert re.search(r'^scarches_stage_duration_seconds_bucket\{le="\+Inf",stage="train"\} [1-9]', text, re.M)
    assert re.search(r'^scarches_queue_length\{queue="scarches-gpu"\} 0.0$', text, re.M)


def test_cancelling_a_queued_and_a_running_job(embedded, receiver, tiny_store) -> None:
    with embedded.client() as client:
        running = client.post("/query", json=body("emb-cancel-running", receiver, **LONG)).json()["job_id"]
        queued = client.post("/query", json=body("emb-cancel-queued", receiver)).json()["job_id"]
        wait_for(client, running, training(2), timeout=180, what="training")
        # One job at a time: the second waits in the queue, and is cancelled at once.
        answer = client.delete(f"/jobs/{queued}")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        stopping = client.delete(f"/jobs/{running}")
        assert stopping.status_code in (200, 202) and stopping.json()["cancel_requested"] is True
        job = wait_for(client, running, final, timeout=60, what="stopped")
        again = client.delete(f"/jobs/{running}")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert client.delete("/jobs/no-such-job").status_code == 404
        never = client.get(f"/jobs/{queued}").json()
    assert job["status"] == "cancelled" and job["error"]["kind"] == "cancelled", job
    assert job["stage"] == "train" and job["epoch"] < job["epochs"]  # stopped between epochs
    assert never["status"] == "cancelled" and never["attempts"] == 0
    for tag, job_id in (("emb-cancel-running", running), ("emb-cancel-queued", queued)):
        (hook,) = receiver.wait_for(f"/hook/{tag}", timeout=30)
        assert hook.json["status"] == "cancelled" and hook.json["job_id"] == job_id
        assert outputs(tiny_store, tag) == []  # nothing published
    assert work_dirs(embedded, running) == []


@pytest.mark.fault("embedded worker and its pool SIGKILLed while a job trains")
def test_a_job_survives_its_worker_being_sigkilled(embedded, receiver, tiny_store, record_property) -> None:
    supervisor = embedded.app.state.engine.embedded
    with embedded.client() as client:
        job_id = client.post("/query", json=body("emb-kill", receiver, scvi_max_epochs_query=15)).json()["job_id"]
        wait_for(client, job_id, training(2), timeout=180, what="training")
        starts = supervisor.starts
        os.killpg(supervisor.process.pid, signal.SIGKILL)  # the worker and its pool processes: the machine died
        job = wait_for(client, job_id, final, timeout=240, what="final after the kill")
        (hook,) = receiver.wait_for("/hook/emb-kill", timeout=30)
    record_property("observed", f"worker restarted ({supervisor.starts - starts}x); job {job['status']} after "
                                f"{job['attempts']} attempts; published {outputs(tiny_store, 'emb-kill')}; webhook "
                                f"{hook.json['status']}")
    assert job["status"] == "done", job
    assert job["attempts"] == 2 and supervisor.starts == starts + 1
    assert job["result"]["output_path"] == "results/emb-kill/cells.tsv"
    assert outputs(tiny_store, "emb-kill") == PUBLISHED  # one table, no partial files
    assert hook.json["status"] == "done"
    assert work_dirs(embedded, job_id) == []
    store = embedded.app.state.job_store
    assert store.get(job_id).published_attempt == 2 and store.get(job_id).requeues == 1


@pytest.mark.fault("the same async POST sent 5 times at once with one Idempotency-Key, then with another body")
def test_one_idempotency_key_starts_one_job(embedded, receiver, tiny_store, record_property) -> None:
    from concurrent.futures import ThreadPoolExecutor

    request = body("emb-idem", receiver)
    headers = {"Idempotency-Key": "order-4711"}
    with embedded.client() as client:
        before = client.get("/jobs").json()["count"]
        with ThreadPoolExecutor(max_workers=5) as pool:
            answers = list(pool.map(lambda _: client.post("/query", json=request, headers=headers), range(5)))
        ids = {a.json()["job_id"] for a in answers}
        job = wait_for(client, ids.pop(), final, timeout=240, what="final") if len(ids) == 1 else {}
        again = client.post("/query", json=request, headers=headers)
        other = client.post("/query", json={**request, "output_path": "results/emb-idem-2/cells.tsv"}, headers=headers)
        after = client.get("/jobs").json()["count"]
    record_property("observed", f"{len(answers)} answers {sorted({a.status_code for a in answers})} naming "
                                f"{len(ids) + bool(job)} job(s); jobs listed +{after - before}; repeat after the end: "
                                f"{again.status_code} {again.json().get('status')}; other body: {other.status_code} "
                                f"{other.json().get('error', '')[:90]}")
    assert [a.status_code for a in answers] == [200] * 5 and not ids and job["status"] == "done"
    assert again.status_code == 200 and again.json()["job_id"] == job["id"] and again.json()["status"] == "done"
    assert other.status_code == 409 and job["id"] in other.json()["error"]
    assert after == before + 1
    assert len(receiver.wait_for("/hook/emb-idem", timeout=30)) == 1
