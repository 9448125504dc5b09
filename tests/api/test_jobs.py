"""Async jobs over HTTP: the README example with "async": true, state transitions, webhooks, and GET /jobs."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from scarches_api.api import create_app

STAGES = {"fetch", "check", "reference", "align", "surgery", "train", "predict", "embed", "write", "publish"}


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.fault("async job on a broken query .h5ad, queued behind the README example")
def test_readme_example_async_scanvi_with_webhook(
    api, s3_server, receiver, readme_body, keys, wait_job, read_table, check_table, record_property
) -> None:
    body = readme_body("readme-async", model="scANVI", debug=False, **{"async": True})
    failing = readme_body("async-broken", query_data=keys["broken"], model_path=None, **{"async": True})
    with api.client() as client:
        started = time.monotonic()
        answer = client.post("/query", json=body).json()
        assert time.monotonic() - started < 10, "an async query must answer before the mapping runs"
        assert answer["status"] == "queued" and {key: answer[key] for key in body} == body
        # One job runs at a time per worker: the second waits its turn.
        second = client.post("/query", json=failing).json()
        assert client.get(f"/jobs/{second['job_id']}").json()["status"] == "queued"

        seen, stages, epochs = [answer["status"]], set(), set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = client.get(f"/jobs/{answer['job_id']}").json()
            if job["status"] != seen[-1]:
                seen.append(job["status"])
            stages.add(job["stage"])
            if job["epoch"] is not None:
                epochs.add((job["epoch"], job["epochs"]))
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        job = wait_job(client, answer["job_id"], webhook=True)
        failed = wait_job(client, second["job_id"], webhook=True)

    assert seen == ["queued", "running", "done"], job
    assert {"train", "publish"} <= stages - {None} <= STAGES and all(1 <= e <= n for e, n in epochs)
    assert (job["stage"], job["epoch"], job["epochs"]) == ("publish", 2, 2)  # how the query training ended
    assert job["mode"] == "async" and job["error"] is None and job["webhook_delivery"]["ok"] is True
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["result"]["output_path"] == "results/readme-async/cells.tsv"

    table = read_table("results/readme-async/cells.tsv")
    check_table(table)
    reference_types = set(table.loc[table["type"] == "reference", "cell_type"])
    assert set(table.loc[table["type"] == "query", "cell_type"]) <= reference_types | {"Unknown"}
    s3_server.client().head_object(Bucket=s3_server.bucket, Key="results/readme-async/model.pt")

    (call,) = receiver.wait_for("/hook/readme-async", timeout=30)
    assert call.json["job_id"] == answer["job_id"] and call.json["status"] == "done" and call.json["async"] is True
    assert call.json["result"]["output_path"] == "results/readme-async/cells.tsv"
    assert call.json["result"]["model_path"] == "results/readme-async/model.pt"

    # A failed job also calls its webhook, with the error; nothing is written at its output key.
    assert failed["status"] == "failed" and failed["error"]["kind"] == "input" and failed["stage"] == "check"
    (hook,) = receiver.wait_for("/hook/async-broken", timeout=30)
    assert hook.json["status"] == "failed" and hook.json["job_id"] == second["job_id"]
    assert "broken.h5ad" in hook.json["error"]["error"] and hook.json["result"] is None
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="results/async-broken/")
    record_property("observed", f"job {failed['status']} at stage {failed['stage']} ({failed['error']['kind']}): "
                                f"{failed['error']['error'][:100]}; webhook got status {hook.json['status']}")


@pytest.mark.s3
@pytest.mark.fault("sync job on a broken query .h5ad (the job fails)")
def test_failed_sync_job_answers_with_its_error_and_calls_the_webhook(
    api, receiver, keys, wait_job, record_property
) -> None:
    body = {
        "atlas": "liu_demo",
        "reference_data": keys["reference"],
        "query_data": keys["broken"],
        "output_path": "results/sync-broken/cells.tsv",
        "webhook": receiver.url("/hook/sync-broken"),
    }
    with api.client() as client:
        response = client.post("/query", json=body)
        assert response.status_code == 422
        error = response.json()
        assert error["kind"] == "input" and error["status"] == "failed" and "broken.h5ad" in error["error"]
        assert "Traceback" not in response.text
        job = client.get(f"/jobs/{error['job_id']}").json()
    assert job["status"] == "failed" and job["mode"] == "sync"
    (hook,) = receiver.wait_for("/hook/sync-broken", timeout=30)
    assert hook.json["status"] == "failed" and hook.json["error"]["kind"] == "input"
    record_property("observed", f"{response.status_code} {error['kind']}: {error['error'][:100]}; job {job['status']}; "
                                f"webhook got {hook.json['status']}")


@pytest.mark.fault("unknown job id; unknown status filter on GET /jobs")
def test_job_listing_and_unknown_job(local_settings, record_property) -> None:
    app = create_app(local_settings)
    store = app.state.job_store
    first = store.create({"model": "scVI"}, mode="sync")
    second = store.create({"model": "scANVI"})
    with TestClient(app) as client:
        listed = client.get("/jobs").json()
        assert listed["count"] == 2 and [j["id"] for j in listed["data"]] == [second.id, first.id]
        assert client.get("/jobs", params={"status": "queued", "limit": 1}).json()["count"] == 2
        assert client.get("/jobs", params={"status": "done"}).json() == {"data": [], "count": 0}
        job = client.get(f"/jobs/{first.id}").json()
        assert (job["status"], job["mode"], job["config"], job["stage"]) == ("queued", "sync", {"model": "scVI"}, None)
        missing = client.get("/jobs/no-such-job")
        assert missing.status_code == 404 and missing.json()["kind"] == "not_found"
        sleeping = client.get("/jobs", params={"status": "sleeping"})
        assert sleeping.status_code == 422
        record_property("observed", f"/jobs/no-such-job: {missing.status_code} {missing.json()['kind']}: "
                                    f"{missing.json()['error'][:80]}; status=sleeping: {sleeping.status_code}")
