"""Fixtures for the job engine tests: tiny real data (and a bundle) in a local store, a webhook receiver, real Redis
and PostgreSQL servers, and worker processes stopped at the end of each test. Helpers are in engine_helpers.py."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine_helpers import BUNDLE_KEY, WorkerProcess
from helpers import liu_files
from servers import Server, postgres_bin, redis_binary, start_postgres, start_redis, stop_server
from scarches_api.config import Settings


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local data folder holding liu/reference.h5ad, liu/query.h5ad (50 cells from each batch) and a scVI bundle."""
    from helpers import fast_config
    from scarches_api.reference import build_reference

    store = tmp_path_factory.mktemp("jobs-store")
    reference, _ = liu_files(store / "liu", cells_per_batch=50)
    build_reference(fast_config("scVI", n_neighbors=5), reference=reference, out_dir=store / BUNDLE_KEY)
    assert (store / BUNDLE_KEY / "metadata.json").is_file()
    return store


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not redis_binary():
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql-15)")
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    stop_server(server)


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: Server) -> str:
    """A fresh database in the session's PostgreSQL server."""
    import sqlalchemy as sa

    name = f"jobs_{os.getpid()}_{next(_databases)}"
    admin = sa.create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


# --- processes ----------------------------------------------------------------------------------------------------
@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers with ``workers(settings, *args)``; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, *args: str) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()




