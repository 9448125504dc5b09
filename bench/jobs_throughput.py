"""Benchmark of the job engine: submit→start latency per executor, and jobs/minute with 1 and 2 workers on tiny jobs.

    .venv/bin/python bench/jobs_throughput.py            # ~5 min on 2 cores; needs redis-server for the Redis rows

Executors: the embedded filesystem broker (SQLite job store) and Redis (a redis-server started here on loopback).
Workers are real ``scarches-api worker`` processes (concurrency 1 each). A tiny job is a real mapping through the real
task: a liu_demo query (50 cells) onto a scVI reference bundle, 1 query epoch, written to a local data folder.

- worker ready: from starting the process to Celery's "ready" line.
- submit→start: an idle, warmed-up worker; from the job's record being created and queued (``created_ts``) to the
  worker's claim (``started_ts``); median of 5 jobs, one after the other.
- jobs/minute: 10 jobs queued at once; 10 / (last finished − first created) × 60.

Writes bench/results/jobs.json and jobs.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "jobs"))

os.environ.setdefault("OMP_NUM_THREADS", "2")

BUNDLE_KEY = "bundles/tiny-scvi"
TINY = dict(atlas="liu_demo", model="scVI", ref_path=BUNDLE_KEY, scvi_max_epochs_query=1, early_stopping=False)


def build_store(root: Path) -> Path:
    from helpers import fast_config, liu_files
    from scarches_api.reference import build_reference

    store = root / "store"
    reference, _ = liu_files(store / "liu", cells_per_batch=50)
    build_reference(fast_config("scVI", n_neighbors=5), reference=reference, out_dir=store / BUNDLE_KEY)
    return store


def settings_for(root: Path, store: Path, broker: str | None):
    from scarches_api.config import Settings

    values = dict(
        AWS_BUCKET=None, SCARCHES_DATA_DIR=store, SCARCHES_WORK_DIR=root / "work", SCARCHES_JOBS_DB=root / "jobs.sqlite",
        SCARCHES_CACHE_DIR=root / "cache", SCARCHES_EMBEDDED_WORKER=False, SCARCHES_WORKER_CONCURRENCY=1,
        SCARCHES_LOG_FORMAT="json",
    )
    if broker:
        values["SCARCHES_BROKER_URL"] = broker
    return Settings(**values)


def config(tag: str) -> dict:
    from scarches_api.config import build_config

    return build_config({"query_data": "liu/query.h5ad", "output_path": f"results/{tag}/cells.tsv", **TINY}).used()


def wait_final(store, job_ids: list[str], timeout: float = 900.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(job_id) for job_id in job_ids]
        if all(job.status.finished for job in jobs):
            return jobs
        time.sleep(0.05)
    raise RuntimeError(f"jobs not final within {timeout} s")


def run_case(name: str, broker: str | None, n_workers: int, store_dir: Path, tmp: Path) -> dict:
    from engine_helpers import WorkerProcess
    from scarches_api.jobs.engine import JobEngine
    from scarches_api.jobs.store import JobStore

    root = tmp / f"{name}-{n_workers}"
    root.mkdir(parents=True)
    settings = settings_for(root, store_dir, broker)
    store = JobStore(settings.jobs_db)
    engine = JobEngine(settings, store)
    started = time.monotonic()
    workers = [WorkerProcess(settings, root / f"worker-{i}.log") for i in range(n_workers)]
    ready = []
    for worker in workers:
        worker.wait_ready(timeout=120)
        ready.append(round(time.monotonic() - started, 2))
    try:
        # Warm up every worker's pool process (its first job loads the bundle and builds its index).
        warm = [engine.submit(config(f"{name}-{n_workers}-warm-{i}")).id for i in range(2 * n_workers)]
        failed = [j for j in wait_final(store, warm) if j.status.value != "done"]
        if failed:
            raise RuntimeError(f"warm-up job failed: {failed[0].error}")
        latencies = []
        for i in range(5):
            job = engine.submit(config(f"{name}-{n_workers}-lat-{i}"))
            (done,) = wait_final(store, [job.id])
            latencies.append(done.started_ts - done.created_ts)
        batch = [engine.submit(config(f"{name}-{n_workers}-batch-{i}")).id for i in range(10)]
        jobs = wait_final(store, batch)
        assert all(job.status.value == "done" and job.attempts == 1 for job in jobs), [j.error for j in jobs]
        span = max(job.finished_ts for job in jobs) - min(job.created_ts for job in jobs)
        run_s = statistics.median(job.finished_ts - job.started_ts for job in jobs)
        return {
            "executor": name,
            "workers": n_workers,
            "worker_ready_s": ready,
            "submit_to_start_ms_median": round(1000 * statistics.median(latencies), 1),
            "submit_to_start_ms": [round(1000 * x, 1) for x in latencies],
            "jobs": len(jobs),
            "batch_seconds": round(span, 2),
            "jobs_per_minute": round(len(jobs) / span * 60, 1),
            "job_run_seconds_median": round(run_s, 2),
        }
    finally:
        for worker in workers:
            worker.stop()
        engine.stop()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="Worker counts to measure (comma-separated).")
    parser.add_argument("--executors", default="embedded,redis")
    args = parser.parse_args()
    from servers import redis_binary, start_redis, stop_server

    tmp = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    redis = None
    rows = []
    try:
        store_dir = build_store(tmp)
        for executor in args.executors.split(","):
            broker = None
            if executor == "redis":
                if not redis_binary():
                    print("redis-server is not installed: skipping the Redis rows", file=sys.stderr)
                    continue
                redis = redis or start_redis(tmp / "redis")
            for n, count in enumerate(int(x) for x in args.workers.split(",")):
                if executor == "redis":
                    broker = redis.url.rsplit("/", 1)[0] + f"/{n + 1}"
                row = run_case(executor, broker, count, store_dir, tmp)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        if redis is not None:
            stop_server(redis)
        shutil.rmtree(tmp, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Job engine: submit→start latency and throughput on tiny jobs",
        "",
        f"{machine['cpus']} CPUs, Python {machine['python']}. Tiny job: liu_demo query (50 cells) onto a scVI bundle,",
        "1 query epoch, real task code. Workers: `scarches-api worker --concurrency 1` each. See bench/jobs_throughput.py.",
        "Worker ready includes loading torch and scvi-tools once in the worker's main process (its pool processes",
        "inherit them). Measured on a 2-core machine shared with other work: throughput with 2 workers is bounded",
        "by the 2 cores the workers, the broker and the benchmark share.",
        "",
        "| executor | workers | worker ready (s) | submit→start, median (ms) | jobs/minute (10 queued) | job run, median (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['executor']} | {row['workers']} | {', '.join(map(str, row['worker_ready_s']))} | "
            f"{row['submit_to_start_ms_median']} | {row['jobs_per_minute']} | {row['job_run_seconds_median']} |"
        )
    (RESULTS / "jobs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
