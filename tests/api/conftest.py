"""Session fixtures for the API tests: a real S3 server, a real webhook receiver, real data in S3, a live service."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import httpx
import pandas as pd
import pytest
from fastapi import FastAPI

from helpers import FAST_EPOCHS, fast_config, liu_files
from live_server import LiveServer
from service_settings import settings_for
from s3server import S3Server, start_s3_server, stop_s3_server
from scarches_api.api import create_app
from scarches_api.config import Settings
from webhook_receiver import WebhookReceiver

# Keys of the test data in the S3 bucket.
REFERENCE_KEY = "liu/reference.h5ad"
QUERY_KEY = "liu/query.h5ad"
BROKEN_KEY = "liu/broken.h5ad"
PRETRAINED_SCVI_KEY = "models/liu-scvi/model.pt"


def s3_settings(tmp: Path, server: S3Server, **env: object) -> Settings:
    env = {
        "AWS_BUCKET": server.bucket,
        "AWS_ENDPOINT": server.endpoint,
        "AWS_ACCESS_KEY": server.access_key,
        "AWS_SECRET_KEY": server.secret_key,
        **env,
    }
    return settings_for(tmp, **env)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop_s3_server(server)


@pytest.fixture(scope="session")
def liu_in_s3(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Subsampled real data (150 cells per batch) uploaded to the test bucket; returns the local copies."""
    reference, query = liu_files(tmp_path_factory.mktemp("liu"), cells_per_batch=150)
    client = s3_server.client()
    client.upload_file(str(reference), s3_server.bucket, REFERENCE_KEY)
    client.upload_file(str(query), s3_server.bucket, QUERY_KEY)
    client.put_object(Bucket=s3_server.bucket, Key=BROKEN_KEY, Body=b"this is not an h5ad file")
    return {"reference": reference, "query": query}


@pytest.fixture(scope="session")
def pretrained_scvi_in_s3(s3_server: S3Server, liu_in_s3: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A scVI reference model trained (2 epochs) on the reference as the service would, saved to S3 as model.pt."""
    from scarches_api.mapping import check_input
    from scarches_api.models import MODELS

    config = fast_config("scVI")
    reference, _ = check_input(ad.read_h5ad(liu_in_s3["reference"]), config, role="reference")
    model = MODELS["scVI"](config).train_reference(reference)
    folder = tmp_path_factory.mktemp("pretrained")
    model.save(str(folder), overwrite=True, save_anndata=False)
    s3_server.client().upload_file(str(folder / "model.pt"), s3_server.bucket, PRETRAINED_SCVI_KEY)
    return PRETRAINED_SCVI_KEY


@dataclass
class Api:
    """The live service and what the tests need to look behind it."""

    url: str
    settings: Settings
    app: FastAPI

    def client(self, timeout: float = 600.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@pytest.fixture(scope="session")
def api(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The service against the test S3 server, over real HTTP."""
    settings = s3_settings(tmp_path_factory.mktemp("api"), s3_server)
    app = create_app(settings)
    live = LiveServer(app, stop_timeout=30).start()
    yield Api(live.url, settings, app)
    live.stop()


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Settings of the embedded default (a local data folder) under tmp_path."""
    return settings_for(tmp_path)


@pytest.fixture
def make_s3_settings(s3_server: S3Server, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for the test S3 server; keyword arguments override the AWS_* variables."""
    return lambda **env: s3_settings(tmp_path, s3_server, **env)


@pytest.fixture(scope="session")
def keys(liu_in_s3: dict[str, Path]) -> dict[str, str]:
    """Keys of the test data, once it is in the bucket."""
    return {"reference": REFERENCE_KEY, "query": QUERY_KEY, "broken": BROKEN_KEY, "pretrained_scvi": PRETRAINED_SCVI_KEY}


@pytest.fixture(scope="session")
def wait_job() -> Callable[..., dict]:
    return wait_for_job


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 300.0, webhook: bool = False) -> dict:
    """Poll GET /jobs/{id} until the job is done or failed (and, with ``webhook``, its webhook outcome is recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed") and (not webhook or job["webhook_delivery"] is not None):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s: {job}")


@pytest.fixture(scope="session")
def readme_body(keys: dict[str, str], receiver: WebhookReceiver, pretrained_scvi_in_s3: str) -> Callable[..., dict]:
    """The original README's example body with its keys pointing at real objects in the test bucket.

    ``tag`` names the output keys and the webhook path; the liu_demo atlas and fast epochs are added, and
    ``overrides`` replace any key.
    """

    def body(tag: str, **overrides: object) -> dict:
        example = {
            "model": "scVI",
            "output_path": f"results/{tag}/cells.tsv",
            "model_path": f"results/{tag}/model.pt",
            "ref_path": pretrained_scvi_in_s3,
            "reference_data": keys["reference"],
            "query_data": keys["query"],
            "webhook": receiver.url(f"/hook/{tag}"),
            "debug": True,
            "async": False,
        }
        example.update(atlas="liu_demo", n_neighbors=5, **FAST_EPOCHS)
        example.update(overrides)
        return example

    return body


TABLE_COLUMNS = {"cell_id", "x", "y", "batch", "type", "cell_type", "predicted", "uncertainty"}
N_REFERENCE, N_QUERY = 300, 150  # liu_demo, 150 cells from each of B1, B2 (reference) and B3 (query)


@pytest.fixture(scope="session")
def read_table(s3_server: S3Server) -> Callable[[str], pd.DataFrame]:
    """Read a result table back from the test bucket; the separator follows the key (.csv comma, else tab)."""

    def read(key: str) -> pd.DataFrame:
        body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode()
        return pd.read_csv(io.StringIO(body), sep="," if key.endswith(".csv") else "\t")

    return read


@pytest.fixture(scope="session")
def check_table() -> Callable[[pd.DataFrame], None]:
    """Assert a result table has the caller's columns and one row per reference and query cell."""

    def check(table: pd.DataFrame) -> None:
        assert TABLE_COLUMNS <= set(table.columns)
        assert len(table) == N_REFERENCE + N_QUERY and table["cell_id"].is_unique
        assert table["type"].value_counts().to_dict() == {"reference": N_REFERENCE, "query": N_QUERY}
        assert (table.loc[table["type"] == "query", "predicted"] == "yes").all()
        assert table["uncertainty"].between(0, 1).all() and table[["x", "y"]].notna().all().all()

    return check
