"""POST /query end to end over HTTP: the original README's body against real S3, and every way a body can be wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from helpers import FAST_EPOCHS, liu_files
from s3server import free_ports
from scarches_api.api import create_app
from scarches_api.models.saved import inspect_saved_model

# --- the README example, sync -------------------------------------------------------------------------------------
@pytest.mark.s3
@pytest.mark.slow
def test_readme_example_sync_scvi(
    api, s3_server, receiver, readme_body, read_table, check_table, tmp_path: Path
) -> None:
    body = readme_body("readme-sync")
    with api.client() as client:
        # The original's caller sent the JSON as text/plain.
        response = client.post("/query", content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert response.status_code == 200, response.text
        answer = response.json()
        job = client.get(f"/jobs/{answer['job_id']}").json()

    # The used configuration comes back, defaults merged in, plus the job's id and state.
    assert {key: answer[key] for key in body} == body
    assert answer["condition_key"] == "Batch" and answer["use_layer_norm"] == "both"
    assert answer["status"] == "done" and answer["result"]["output_path"] == "results/readme-sync/cells.tsv"
    assert answer["webhook_delivery"]["ok"] is True
    assert (job["status"], job["mode"], job["stage"]) == ("done", "sync", "publish")
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]

    check_table(read_table("results/readme-sync/cells.tsv"))
    s3_server.client().download_file(s3_server.bucket, "results/readme-sync/model.pt", str(tmp_path / "model.pt"))
    assert inspect_saved_model(tmp_path / "model.pt").class_name == "SCVI"

    (call,) = receiver.wait_for("/hook/readme-sync", timeout=30)
    assert call.json["job_id"] == answer["job_id"] and call.json["status"] == "done"
    assert call.json["result"]["output_path"] == "results/readme-sync/cells.tsv"
    assert call.json["result"]["model_path"] == "results/readme-sync/model.pt"
    assert call.json["model"] == "scVI" and call.json["async"] is False
    # debug keeps the job's downloads and intermediate files.
    assert (api.settings.work_dir / answer["job_id"] / "inputs").is_dir()


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.fault("webhook receiver down during a totalVI job")
def test_totalvi_with_s3_uris_completes_when_the_webhook_is_down(
    api, s3_server, readme_body, read_table, check_table, record_property
) -> None:
    dead_hook = f"http://127.0.0.1:{free_ports(1)[0]}/hook"
    body = readme_body(
        "totalvi",
        model="totalVI",
        ref_path=None,
        reference_data=f"s3://{s3_server.bucket}/liu/reference.h5ad",
        output_path=f"s3://{s3_server.bucket}/results/totalvi/cells.csv",
        model_path=f"s3://{s3_server.bucket}/results/totalvi/model",
        webhook=dead_hook,
        debug=False,
    )
    with api.client() as client:
        response = client.post("/query", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        job = client.get(f"/jobs/{answer['job_id']}").json()
    assert answer["status"] == job["status"] == "done"
    assert job["webhook_delivery"]["ok"] is False and job["webhook_delivery"]["url"] == dead_hook
    assert "Connect" in job["webhook_delivery"]["error"]
    delivery = job["webhook_delivery"]
    record_property("observed", f"job {job['status']}; webhook ok={delivery['ok']}, {len(delivery['attempts'])} "
                                f"attempts: {delivery['error'][:120]}")
    table = read_table("results/totalvi/cells.csv")  # .csv: comma-separated
    check_table(table)
    assert any(column.startswith("protein:") for column in table.columns)
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="results/totalvi/model/")
    assert "results/totalvi/model/model.pt" in {item["Key"] for item in listed["Contents"]}
    assert not (api.settings.work_dir / answer["job_id"]).exists()


@pytest.mark.slow
def test_embedded_default_maps_within_the_local_data_folder(local_settings) -> None:
    # No cloud: the keys are paths inside SCARCHES_DATA_DIR, as with a bare `scarches-api serve`.
    liu_files(local_settings.data_dir / "liu", cells_per_batch=150)
    body = {
        "atlas": "liu_demo",
        "reference_data": "liu/reference.h5ad",
        "query_data": "liu/query.h5ad",
        "output_path": "results/local/cells.tsv",
        "model_path": "results/local/model",
        "n_neighbors": 5,
        **FAST_EPOCHS,
    }
    with TestClient(create_app(local_settings)) as client:
        response = client.post("/query", content=json.dumps(body))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done"
    table = pd.read_csv(local_settings.data_dir / "results" / "local" / "cells.tsv", sep="\t")
    assert len(table) == 450 and {"cell_id", "cell_type", "batch", "x", "y"} <= set(table.columns)
    assert (local_settings.data_dir / "results" / "local" / "model" / "model.pt").is_file()


@pytest.mark.s3
@pytest.mark.fault("query_data key that does not exist in the S3 bucket")
def test_missing_s3_key_is_404_naming_it(api, keys, record_property) -> None:
    body = {"reference_data": keys["reference"], "query_data": "liu/no-such.h5ad", "output_path": "results/x.tsv"}
    with api.client(timeout=30) as client:
        response = client.post("/query", json=body)
    assert response.status_code == 404
    error = response.json()
    assert error["kind"] == "not_found" and "query_data" in error["error"] and "liu/no-such.h5ad" in error["error"]
    record_property("observed", f"{response.status_code} {error['kind']}: {error['error'][:160]}")


# --- bodies that are refused before any work ----------------------------------------------------------------------
@pytest.fixture
def client(local_settings):
    with TestClient(create_app(local_settings), raise_server_exceptions=False) as client:
        yield client


def post(client: TestClient, content: str, content_type: str | None = "application/json"):
    return client.post("/query", content=content, headers={"Content-Type": content_type} if content_type else {})


@pytest.mark.fault("invalid JSON body (truncated object)")
def test_invalid_json_is_422(client, record_property) -> None:
    response = post(client, '{"model": "scVI",')
    assert response.status_code == 422
    assert response.json()["kind"] == "config" and "not valid JSON" in response.json()["error"]
    record_property("observed", f"{response.status_code} {response.json()['kind']}: {response.json()['error'][:160]}")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"model": "scVI", "epochs_of_doom": 3}, "epochs_of_doom"),
        ({"scvi_max_epochs": "many"}, "scvi_max_epochs"),
        ({"model": "notAModel"}, "model"),
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"model": "scVI"}, "reference_data"),
        ({"reference_data": "a", "query_data": "b", "output_path": "c", "webhook": "ftp://x"}, "webhook"),
    ],
)
@pytest.mark.fault("bad config: unknown key, wrong type, unknown model, out of range, missing key, non-HTTP webhook")
def test_bad_config_is_422_naming_the_key(client, body: dict, key: str, record_property) -> None:
    response = post(client, json.dumps(body))
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["kind"] == "config" and key in error["error"] and key in error["details"]["keys"]
    record_property("observed", f"{response.status_code} {error['kind']} keys={error['details']['keys']}: "
                                f"{error['error'][:120]}")


@pytest.mark.fault("JSON body that is no object: an array, a number, a string")
def test_a_body_that_is_no_object_is_422(client, record_property) -> None:
    seen: list[str] = []
    for content in ("[1, 2]", "42", '"scVI"'):
        response = post(client, content)
        assert response.status_code == 422 and "JSON object" in response.json()["error"]
        seen.append(f"{content}: {response.status_code}")
    record_property("observed", f"{'; '.join(seen)} ({response.json()['error'][:100]})")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.fault("JSON sent with a non-JSON or no Content-Type; JSON double-encoded as a string, with an unknown key")
def test_any_content_type_is_parsed_as_json(client, content_type: str | None, record_property) -> None:
    # Parsed: the answer is about the configuration's keys, not about the body's type.
    response = post(client, json.dumps({"model": "scanvi"}), content_type)
    assert response.status_code == 422 and "reference_data" in response.json()["error"]
    twice = post(client, json.dumps(json.dumps({"model": "scanvi", "bogus": 1})), content_type)
    assert twice.status_code == 422 and "bogus" in twice.json()["error"]
    record_property("observed", f"Content-Type {content_type}: {response.status_code}: "
                                f"{response.json()['error'][:60]}; double-encoded: {twice.status_code}: "
                                f"{twice.json()['error'][:50]}")


@pytest.mark.fault("local key traversal (../, absolute path, s3:// URI without S3); a missing local file")
def test_local_keys_stay_inside_the_data_folder(client, record_property) -> None:
    seen: list[str] = []
    for key in ("../outside.h5ad", "/etc/passwd", "s3://bucket/key.h5ad"):
        response = post(client, json.dumps({"reference_data": key, "query_data": "q.h5ad", "output_path": "o.tsv"}))
        assert response.status_code == 422 and "reference_data" in response.json()["error"]
        seen.append(f"{key}: {response.status_code}")
    missing = post(client, json.dumps({"reference_data": "r.h5ad", "query_data": "q.h5ad", "output_path": "o.tsv"}))
    assert missing.status_code == 404 and "r.h5ad" in missing.json()["error"]
    seen.append(f"r.h5ad (missing): {missing.status_code} {missing.json()['error'][:60]}")
    record_property("observed", "; ".join(seen))


@pytest.mark.fault("unexpected exception inside the service (the job store raises RuntimeError)")
def test_unexpected_failure_is_500_with_an_error_id_in_the_logs(local_settings, caplog, record_property) -> None:
    app = create_app(local_settings)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    app.state.job_store.get = broken
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/jobs/some-id")
    assert response.status_code == 500
    body = response.json()
    assert body["kind"] == "internal" and body["error"] == "internal error" and body["error_id"]
    assert "secret" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info and "secret internals" in str(logged[0].exc_info[1])
    record_property("observed", f"{response.status_code} {body['kind']}: {body['error']}; error_id logged with "
                                f"{type(logged[0].exc_info[1]).__name__}: {logged[0].exc_info[1]}")


@pytest.mark.s3
@pytest.mark.fault("POST /check with a condition_key missing from the data")
def test_check_reports_in_seconds_without_a_job(api, keys, readme_body, record_property) -> None:
    with api.client() as client:
        answer = client.post("/check", json=readme_body("check"))
        jobs_before = client.get("/jobs").json()["count"]
        bad = client.post("/check", json=readme_body("check-bad", condition_key="donor"))
        assert client.get("/jobs").json()["count"] == jobs_before
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["verdict"] == "ok" and report["genes"]["overlap_after"] == 1.0 and report["query"]["cells"] == 150
    assert bad.status_code == 200 and bad.json()["verdict"] == "error"
    assert any("donor" in reason for reason in bad.json()["reasons"])
    donor = next(reason for reason in bad.json()["reasons"] if "donor" in reason)
    record_property("observed", f"{bad.status_code} verdict {bad.json()['verdict']}: {donor[:140]}")
