"""Plain helpers for tests: small real data (liu_demo subsamples) built once per session, and quick configs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import anndata as ad
import httpx

from scarches_api.config import QueryConfig, build_config
from scarches_api.datasets import fetch_liu_demo, split_liu

REPO = Path(__file__).resolve().parents[1]

# Epochs that train every model in seconds on 2 cores: enough to exercise each step, not to map well.
FAST_EPOCHS = dict(
    scvi_max_epochs=2,
    scvi_max_epochs_query=2,
    scanvi_max_epochs=1,
    scanvi_max_epochs_query=2,
    totalvi_max_epochs_1=2,
    totalvi_max_epochs_2=2,
)


@lru_cache(maxsize=1)
def liu_demo() -> ad.AnnData:
    """The full real data set, read once per test session (fetched into data/ on first use)."""
    return ad.read_h5ad(fetch_liu_demo(REPO / "data"))


def liu_split(cells_per_batch: int = 150, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference (B1+B2) and query (B3) AnnData, ``cells_per_batch`` cells from each batch."""
    return split_liu(liu_demo(), cells_per_batch=cells_per_batch, seed=seed)


def liu_files(tmp_dir: str | Path, cells_per_batch: int = 150, seed: int = 0) -> tuple[Path, Path]:
    """The split written as reference.h5ad and query.h5ad under ``tmp_dir``."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    reference, query = liu_split(cells_per_batch, seed)
    ref_path, query_path = tmp_dir / "reference.h5ad", tmp_dir / "query.h5ad"
    reference.write_h5ad(ref_path)
    query.write_h5ad(query_path)
    return ref_path, query_path


def fast_config(model: str = "scVI", **overrides) -> QueryConfig:
    """A liu_demo config with FAST_EPOCHS."""
    return build_config({"model": model, "atlas": "liu_demo", "n_neighbors": 5, **FAST_EPOCHS, **overrides})


def wait_for(client: httpx.Client, job_id: str, predicate: Callable[[dict], bool], *, timeout: float, what: str) -> dict:
    """Poll GET /jobs/{id} until ``predicate(job)``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: not {what} within {timeout} s: {json.dumps(job)[:2000]}")
