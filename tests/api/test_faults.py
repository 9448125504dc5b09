"""Faults injected into real processes on loopback: the S3 server stopped while a job trains, and 20 async requests
at once. Each records what it observed for docs/faults.md (see tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import FAST_EPOCHS, wait_for
from live_server import LiveServer
from service_settings import settings_for
from s3server import S3Server, restart_s3_server, start_s3_server, stop_s3_server
from scarches_api.api import create_app
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.s3


def ended(job: dict) -> bool:
    return job["status"] in ("done", "failed")


@pytest.fixture
def own_s3(tmp_path: Path, liu_in_s3: dict[str, Path], keys: dict[str, str]) -> Iterator[list[S3Server]]:
    """An S3 server of this test's own, holding the test data under the same keys; the test may stop and restart it
    (the list's last entry is the running one)."""
    servers = [start_s3_server(tmp_path / "weed")]
    client = servers[0].client()
    for name in ("reference", "query"):
        client.upload_file(str(liu_in_s3[name]), servers[0].bucket, keys[name])
    yield servers
    stop_s3_server(servers[-1])


def objects(server: S3Server, prefix: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.mark.fault("S3 server stopped while an async job trains; a query posted while it is down")
def test_s3_stopped_mid_job_fails_the_job_cleanly_and_stores_nothing(
    own_s3: list[S3Server], keys: dict[str, str], receiver: WebhookReceiver, tmp_path: Path, record_property
) -> None:
    server = own_s3[0]
    settings = settings_for(tmp_path / "service", AWS_BUCKET=server.bucket, AWS_ENDPOINT=server.endpoint,
                            AWS_ACCESS_KEY=server.access_key, AWS_SECRET_KEY=server.secret_key)
    body = {
        "model": "scVI", "atlas": "liu_demo", "reference_data": keys["reference"], "query_data": keys["query"],
        "output_path": "results/s3-down/cells.tsv", "model_path": "results/s3-down/model",
        "webhook": receiver.url("/hook/s3-down"), "async": True,
        # Long enough to be caught training, short enough to end in minutes on a loaded machine.
        **FAST_EPOCHS, "scvi_max_epochs_query": 100, "early_stopping": False,
    }
    with LiveServer(create_app(settings)) as live, live.client() as client:
        job_id = client.post("/query", json=body).json()["job_id"]
        wait_for(client, job_id, lambda j: j["stage"] == "train" and (j["epoch"] or 0) >= 2, timeout=240, what="training")
        stop_s3_server(server)
        job = wait_for(client, job_id, ended, timeout=600, what="ended")
        ready = client.get("/readiness")
        refused = client.post("/query", json={**body, "output_path": "results/s3-down-2/cells.tsv"})
        (hook,) = receiver.wait_for("/hook/s3-down", timeout=60)
    own_s3.append(restart_s3_server(server))
    left = objects(own_s3[-1], "results/")
    inputs = objects(own_s3[-1], "liu/")
    record_property(
        "observed",
        f"job {job['status']} after {job['attempts']} attempt(s): {job['error']['error'][:120]}; webhook got "
        f"status {hook.json['status']}; readiness {ready.status_code}; new query {refused.status_code}: "
        f"{refused.json()['error'][:80]}; after restart {len(left)} objects under results/, inputs intact",
    )
    assert job["status"] == "failed" and job["error"]["status_code"] == 502, job
    assert "S3" in job["error"]["error"] and "results/s3-down" in job["error"]["error"]
    assert hook.json["status"] == "failed" and hook.json["job_id"] == job_id
    assert ready.status_code == 503
    assert refused.status_code == 502 and "reference_data: S3" in refused.json()["error"]
    assert left == []  # nothing partial: the model and the reports are published only with the table
    assert inputs == sorted([keys["query"], keys["reference"]])


@pytest.mark.fault("20 async queries posted at once to one service")
def test_twenty_concurrent_async_queries_all_finish(api, keys, receiver: WebhookReceiver, record_property) -> None:
    body = {
        "model": "scVI", "atlas": "liu_demo", "reference_data": keys["reference"], "query_data": keys["query"],
        "async": True, **FAST_EPOCHS,
    }

    def post(i: int) -> httpx.Response:
        with api.client(timeout=60) as client:
            return client.post("/query", json={**body, "output_path": f"results/many/{i}/cells.tsv",
                                               "webhook": receiver.url(f"/hook/many-{i}")})

    supervisor = api.app.state.engine.embedded
    with TreeMemory(lambda: supervisor.process.pid if supervisor.process else None) as memory:
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(post, range(20)))
        ids = [a.json()["job_id"] for a in answers]
        with api.client() as client:
            jobs = [wait_for(client, i, ended, timeout=900, what="ended") for i in ids]
    hooks = [receiver.wait_for(f"/hook/many-{i}", timeout=60) for i in range(20)]
    statuses = sorted({j["status"] for j in jobs})
    record_property(
        "observed",
        f"{len(answers)} answered {sorted({a.status_code for a in answers})}, {len(set(ids))} distinct jobs, "
        f"final statuses {statuses}, attempts {sorted({j['attempts'] for j in jobs})}, "
        f"{sum(len(h) for h in hooks)} webhooks; worker processes' RSS peaked at {memory.peak_mb:.0f} MB",
    )
    assert [a.status_code for a in answers] == [200] * 20 and len(set(ids)) == 20
    assert statuses == ["done"], [j["error"] for j in jobs if j["status"] != "done"]
    assert all(len(h) == 1 and h[0].json["status"] == "done" for h in hooks)
    assert all(j["attempts"] == 1 for j in jobs)
    # Queued jobs wait as records, not as loaded data: memory is that of the jobs running at once, not of 20.
    assert memory.peak_mb < 3000


class TreeMemory:
    """Samples the summed RSS of a process (``pid()``, None while there is none) and its descendants, from /proc,
    every 0.2 s; keeps the peak."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            root = self.pid()
            if root is not None:
                self.peak_mb = max(self.peak_mb, sum(_rss_kb(p) for p in _tree(root)) / 1024)


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
