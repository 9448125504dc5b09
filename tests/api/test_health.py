"""Liveness, readiness against real storage, OpenAPI, and the gunicorn entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from s3server import free_ports
from scarches_api.api import create_app


def test_liveness_and_local_readiness(local_settings, tmp_path: Path) -> None:
    with TestClient(create_app(local_settings)) as client:
        live = client.get("/liveness")
        assert (live.status_code, live.text) == (200, "up")
        ready = client.get("/readiness")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "storage": f"local folder {(tmp_path / 'store').resolve()}"}


@pytest.mark.fault("unknown route (GET /no-such-endpoint)")
def test_unknown_route_keeps_the_error_shape(local_settings, record_property) -> None:
    with TestClient(create_app(local_settings)) as client:
        response = client.get("/no-such-endpoint")
        assert response.status_code == 404 and response.json() == {"error": "Not Found", "kind": "http"}
        record_property("observed", f"{response.status_code}: {response.text[:160]}")


def test_openapi_shows_the_config_schema_with_defaults(local_settings) -> None:
    with TestClient(create_app(local_settings)) as client:
        spec = client.get("/openapi.json").json()
        schema = spec["paths"]["/query"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        props = schema["properties"]
        assert props["model"]["default"] == "scVI" and props["scvi_max_epochs"]["default"] == 400
        assert props["async"]["default"] is False and props["n_neighbors"]["default"] == 8
        assert "description" in props["output_path"]
        assert {"/liveness", "/readiness", "/query", "/jobs", "/jobs/{job_id}"} <= set(spec["paths"])
        assert client.get("/docs").status_code == 200


@pytest.mark.s3
def test_readiness_with_s3(api) -> None:
    with api.client(timeout=30) as client:
        response = client.get("/readiness")
    assert response.status_code == 200 and "S3 bucket 'scarches'" in response.json()["storage"]


@pytest.mark.s3
@pytest.mark.fault("wrong S3 secret key (readiness)")
def test_readiness_fails_with_wrong_credentials(make_s3_settings, record_property) -> None:
    # The server checks signatures: the wrong secret is refused, and readiness says so (no secret in the answer).
    settings = make_s3_settings(AWS_SECRET_KEY="wrong-secret")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readiness")
    assert response.status_code == 503
    body = response.json()
    assert body["kind"] == "storage" and "AWS_SECRET_KEY" in body["error"] and "wrong-secret" not in response.text
    record_property("observed", f"{response.status_code} {body['kind']}: {body['error'][:160]}")


@pytest.mark.s3
@pytest.mark.fault("S3 bucket that does not exist; S3 endpoint where nothing listens (readiness)")
def test_readiness_fails_without_the_bucket_or_server(make_s3_settings, record_property) -> None:
    seen: list[str] = []
    for env in ({"AWS_BUCKET": "no-such-bucket"}, {"AWS_ENDPOINT": f"http://127.0.0.1:{free_ports(1)[0]}"}):
        with TestClient(create_app(make_s3_settings(**env))) as client:
            response = client.get("/readiness")
        assert response.status_code == 503 and response.json()["kind"] == "storage"
        seen.append(f"{response.status_code} {response.json()['kind']}: {response.json()['error'][:70]}")
    record_property("observed", "; ".join(seen))


def test_serve_runs_gunicorn_with_uvicorn_workers(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "WORKERS": "2",
        "THREADS": "2",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "SCARCHES_DATA_DIR": str(tmp_path / "store"),
        "SCARCHES_WORK_DIR": str(tmp_path / "work"),
        "SCARCHES_JOBS_DB": str(tmp_path / "jobs.sqlite"),
    }
    env.pop("AWS_BUCKET", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        command = [sys.executable, "-m", "scarches_api", "serve"]  # what `scarches-api serve` runs
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/liveness", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        assert (response.status_code, response.text) == (200, "up")
        assert httpx.get(f"http://127.0.0.1:{port}/readiness", timeout=10).status_code == 200
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    assert "UvicornWorker" in text or "uvicorn" in text.lower()
    assert text.count("Booting worker") == 2
