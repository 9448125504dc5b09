"""Bounded inputs: the body-size middleware over real HTTP (uvicorn), object size, cell/gene counts, storage keys,
and .h5ad files that are not, or no longer, whole."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from s3server import free_ports
from scarches_api.errors import ConfigError, InputDataError
from scarches_api.io.storage import LocalStorage
from scarches_api.limits import (
    BodySizeLimit,
    ForbiddenKeyError,
    LimitError,
    TooLargeError,
    check_bucket,
    check_key,
    check_object_size,
    check_shape,
    check_storage_keys,
    h5ad_shape,
    object_size,
    read_h5ad_checked,
)

LIMIT = 1000


class Echo(BaseModel):
    text: str


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.bodies = []

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        body = await request.body()
        app.state.bodies.append(len(body))
        return {"got": len(body)}

    @app.post("/model")
    async def model(echo: Echo) -> dict:  # FastAPI reads this body itself (and would answer 400 on a read error)
        return {"got": len(echo.text)}

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    return app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FastAPI]]:
    app = make_app()
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


def chunks(total: int, size: int = 300) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def assert_413(answer: httpx.Response) -> None:
    assert answer.status_code == 413
    body = answer.json()
    assert body["kind"] == "too_large" and f"{LIMIT} bytes" in body["error"] and "SCARCHES_MAX_BODY_BYTES" in body["error"]


def test_body_under_the_limit_passes(served: tuple[str, FastAPI]) -> None:
    url, _ = served
    assert httpx.post(f"{url}/raw", content=b"y" * LIMIT).json() == {"got": LIMIT}
    assert httpx.post(f"{url}/raw", content=chunks(LIMIT)).json() == {"got": LIMIT}  # chunked, exactly at the limit


@pytest.mark.fault("oversize body with a declared Content-Length (5x the limit)")
def test_declared_oversize_body_is_refused_before_the_app_runs(served: tuple[str, FastAPI], record_property) -> None:
    url, app = served
    before = list(app.state.bodies)
    answer = httpx.post(f"{url}/raw", content=b"y" * (LIMIT * 5))
    assert_413(answer)
    assert app.state.bodies == before
    record_property("observed", f"{answer.status_code}: {answer.json()['error'][:140]}; "
                                f"app read {len(app.state.bodies) - len(before)} bodies")


@pytest.mark.fault("oversize chunked body (no Content-Length), to a raw and a JSON-model endpoint")
def test_chunked_oversize_body_is_refused(served: tuple[str, FastAPI], record_property) -> None:
    url, app = served
    before = list(app.state.bodies)
    raw = httpx.post(f"{url}/raw", content=chunks(LIMIT * 5))
    assert_413(raw)
    model = httpx.post(f"{url}/model", content=chunks(LIMIT * 5), headers={"content-type": "application/json"})
    assert_413(model)
    assert app.state.bodies == before
    record_property("observed", f"/raw: {raw.status_code} {raw.json()['kind']}; /model: {model.status_code} "
                                f"{model.json()['kind']}; app read {len(app.state.bodies) - len(before)} bodies")


@pytest.mark.fault("lying Content-Length (declares 10 bytes, sends 3000)")
def test_a_lying_content_length_is_counted_not_trusted(record_property) -> None:
    app = make_app()
    messages = [{"type": "http.request", "body": b"z" * 600, "more_body": True} for _ in range(5)]
    read: list[int] = []

    async def receive() -> dict:
        read.append(1)
        return messages.pop(0)

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/raw", "raw_path": b"/raw", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", b"10")], "client": ("127.0.0.1", 1), "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"too_large" in sent[1]["body"]
    assert len(read) == 2  # stopped at the first chunk past the limit
    assert app.state.bodies == []
    answer = json.loads(sent[1]["body"])
    record_property("observed", f"{sent[0]['status']} {answer['kind']}: {answer['error'][:100]}; "
                                f"{len(read)} chunks read of 5; app read {len(app.state.bodies)} bodies")


def limits(**kw: object) -> SimpleNamespace:
    base = {"max_object_mb": 50_000, "max_cells": 2_000_000, "max_genes": 100_000, "allowed_buckets": "",
            "aws_bucket": "atlas"}
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.fault("storage object larger than SCARCHES_MAX_OBJECT_MB (60 GiB)")
def test_object_size_limit_names_the_key_and_the_limit(tmp_path: Path, record_property) -> None:
    check_object_size("liu/query.h5ad", 49_000 * 2**20, limits())
    check_object_size("liu/query.h5ad", None, limits())
    with pytest.raises(TooLargeError) as info:
        check_object_size("liu/query.h5ad", 60 * 2**30, limits())
    err = info.value
    assert err.status_code == 413 and "'liu/query.h5ad'" in err.message and "50000 MB" in err.message
    assert "SCARCHES_MAX_OBJECT_MB" in err.message and err.details["key"] == "liu/query.h5ad"
    record_property("observed", f"{err.status_code} {type(err).__name__}: {err.message[:160]}")
    storage = LocalStorage(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"0" * 1234)
    assert object_size(storage, "a.bin") == 1234 and object_size(storage, ".") is None


@pytest.mark.fault("too many cells (2,000,001) in the query; too many genes (120,000) in the reference")
def test_shape_limits_name_the_limit_and_how_to_raise_it(record_property) -> None:
    check_shape(2_000_000, 100_000, "query", limits())
    check_shape(5_000_000, 100, "query", limits(max_cells=0))  # 0: no limit
    with pytest.raises(LimitError) as info:
        check_shape(2_000_001, 30_000, "query", limits())
    assert info.value.status_code == 422 and "query data has 2,000,001 cells" in info.value.message
    assert "2,000,000" in info.value.message and "SCARCHES_MAX_CELLS" in info.value.message
    assert "SCARCHES_MAX_GENES" not in info.value.message
    with pytest.raises(LimitError, match="reference data has 120,000 genes.*SCARCHES_MAX_GENES") as genes:
        check_shape(10, 120_000, "reference", limits())
    record_property("observed", f"{info.value.status_code}: {info.value.message[:90]}; "
                                f"{genes.value.status_code}: {genes.value.message[:90]}")


@pytest.mark.fault("bucket not allowed; key in another bucket; key traversal (../, absolute, NUL, empty, backslash)")
def test_buckets_and_keys(record_property) -> None:
    check_bucket("atlas", limits())
    check_bucket("shared-refs", limits(allowed_buckets="shared-refs, other"))
    with pytest.raises(ForbiddenKeyError) as info:
        check_bucket("someone-elses", limits())
    assert info.value.status_code == 403 and "SCARCHES_ALLOWED_BUCKETS" in info.value.message
    check_key("s3://atlas/liu/q.h5ad", limits(), config_key="query_data")
    with pytest.raises(ForbiddenKeyError) as other:
        check_key("s3://secrets/creds.h5ad", limits(), config_key="query_data")
    refused: list[str] = []
    for bad in ("../etc/passwd", "liu/../../x", "s3://atlas/a/../b", "/abs/key", "a\x00b", "", "s3://atlas", "a\\..\\b"):
        with pytest.raises(ConfigError) as err:
            check_key(bad, limits(), config_key="output_path")
        assert err.value.details["keys"] == ["output_path"], bad
        refused.append(type(err.value).__name__)
    # Local storage: absolute paths are the storage's to judge (it confines them to the data folder).
    check_key("/data/store/q.h5ad", limits(aws_bucket=None))
    config = SimpleNamespace(reference_data="r.h5ad", query_data="q.h5ad", ref_path=None, output_path="../o.tsv",
                             model_path=None)
    with pytest.raises(ConfigError, match="output_path") as stored:
        check_storage_keys(config, limits())
    record_property("observed", f"bucket: {info.value.status_code} {type(info.value).__name__}; other bucket: "
                                f"{other.value.status_code} {type(other.value).__name__}; {len(refused)} bad keys: "
                                f"{', '.join(sorted(set(refused)))}; config: {stored.value.details.get('keys')}")


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("h5ad") / "small.h5ad"
    adata = ad.AnnData(np.random.default_rng(0).poisson(1.0, size=(30, 12)).astype(np.float32))
    adata.obs_names = [f"c{i}" for i in range(30)]
    adata.var_names = [f"g{i}" for i in range(12)]
    adata.write_h5ad(path)
    return path


@pytest.mark.fault(".h5ad with more cells than SCARCHES_MAX_CELLS (30 > 29)")
def test_h5ad_shape_from_metadata(small_h5ad: Path, tmp_path: Path, record_property) -> None:
    assert h5ad_shape(small_h5ad, role="query") == (30, 12)
    assert read_h5ad_checked(small_h5ad, role="query", settings=limits()).shape == (30, 12)
    with pytest.raises(LimitError, match="query data has 30 cells") as info:
        read_h5ad_checked(small_h5ad, role="query", settings=limits(max_cells=29))
    record_property("observed", f"{info.value.status_code} {type(info.value).__name__}: {info.value.message[:160]}")


@pytest.mark.fault("truncated .h5ad; text file as .h5ad; pickle stream as .h5ad; empty file")
def test_truncated_or_foreign_files_are_clear_errors(small_h5ad: Path, tmp_path: Path, record_property) -> None:
    data = small_h5ad.read_bytes()
    truncated = tmp_path / "cut.h5ad"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputDataError, match="cut.h5ad is a damaged or truncated .h5ad file") as info:
        h5ad_shape(truncated, role="query")
    assert info.value.status_code == 422
    text = tmp_path / "broken.h5ad"
    text.write_bytes(b"this is not an h5ad file")
    with pytest.raises(InputDataError, match="not an .h5ad file \\(no HDF5 signature") as foreign:
        h5ad_shape(text, role="reference")
    pickle_file = tmp_path / "evil.h5ad"
    pickle_file.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle stream is never unpickled
    with pytest.raises(InputDataError, match="no HDF5 signature") as pickled:
        read_h5ad_checked(pickle_file, role="query", settings=limits())
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match="empty file") as nothing:
        h5ad_shape(empty, role="query")
    record_property("observed", "; ".join(f"{e.value.status_code}: {str(e.value).split(': ', 1)[-1][:42]}"
                                          for e in (info, foreign, pickled, nothing)))
