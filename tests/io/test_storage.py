"""Storage backends: the local data folder, and S3 against a real SeaweedFS server (signatures checked)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3server import S3Server, start_s3_server, stop_s3_server
from scarches_api.config import Settings
from scarches_api.errors import ConfigError, NotFoundError, StorageError
from scarches_api.io.storage import LocalStorage, S3Storage, storage_from_settings


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "saved"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "extra" / "notes.txt").write_text("n")
    return folder


# --- local --------------------------------------------------------------------------------------------------------
def test_local_reads_in_place_and_refuses_leaving_the_folder(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    (store.root / "in").mkdir()
    (store.root / "in" / "a.h5ad").write_bytes(b"x")
    assert store.fetch("in/a.h5ad", tmp_path / "unused") == store.root / "in" / "a.h5ad"
    assert store.fetch(str(store.root / "in" / "a.h5ad"), tmp_path / "unused").read_bytes() == b"x"
    assert store.exists("in/a.h5ad") and store.exists("in") and not store.exists("in/b.h5ad")
    with pytest.raises(NotFoundError, match="in/b.h5ad"):
        store.fetch("in/b.h5ad", tmp_path / "unused")
    for bad in ("../secret", "in/../../secret", "/etc/passwd", "s3://bucket/key"):
        with pytest.raises(ConfigError):
            store.fetch(bad, tmp_path / "unused")
    store.check()


def test_local_publish_replaces_atomically(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    new = tmp_path / "new.tsv"
    new.write_text("a\tb\n1\t2\n")
    target = store.root / "out" / "cells.tsv"
    target.parent.mkdir()
    target.write_text("old")
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:  # only the old or the whole new content may ever be seen at the key
        while not stop.is_set():
            seen.append(target.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(50):
        store.publish(new, "out/cells.tsv")
    stop.set()
    thread.join()
    assert set(seen) <= {"old", "a\tb\n1\t2\n"}
    assert target.read_text() == "a\tb\n1\t2\n"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_local_publish_tree(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    folder = model_folder(tmp_path)
    assert store.publish_tree(folder, "models/one/model.pt") == [str(store.root / "models/one/model.pt")]
    written = store.publish_tree(folder, "models/two")
    relative = sorted(Path(p).relative_to(store.root).as_posix() for p in written)
    assert relative == ["models/two/extra/notes.txt", "models/two/model.pt"]
    assert store.fetch_tree("models/two", tmp_path / "x") == store.root / "models" / "two"


def test_storage_from_settings(tmp_path: Path) -> None:
    local = storage_from_settings(Settings(SCARCHES_DATA_DIR=tmp_path / "d", AWS_BUCKET=None))
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "d").resolve()
    s3 = storage_from_settings(
        Settings(AWS_BUCKET="b", AWS_ENDPOINT="http://127.0.0.1:1", AWS_ACCESS_KEY="k", AWS_SECRET_KEY="s")
    )
    assert isinstance(s3, S3Storage) and s3.bucket == "b"


# --- S3 -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs-storage"), buckets=("scarches", "other"))
    yield server
    stop_s3_server(server)


def s3_storage(server: S3Server, **kwargs) -> S3Storage:
    return S3Storage(server.bucket, server.endpoint, server.access_key, server.secret_key, **kwargs)


@pytest.mark.s3
def test_s3_round_trip_with_multipart(s3: S3Server, tmp_path: Path) -> None:
    # A small part size forces a real multipart upload and ranged download through the server.
    store = s3_storage(s3, multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    data = os.urandom(12 << 20)
    (tmp_path / "big.h5ad").write_bytes(data)
    assert store.publish(tmp_path / "big.h5ad", "in/big.h5ad") == "s3://scarches/in/big.h5ad"
    etag = s3.client().head_object(Bucket="scarches", Key="in/big.h5ad")["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts
    got = store.fetch("in/big.h5ad", tmp_path / "down" / "big.h5ad")
    assert got == tmp_path / "down" / "big.h5ad" and got.read_bytes() == data
    assert store.exists("in/big.h5ad") and store.exists("in") and not store.exists("in/nothing")


@pytest.mark.s3
def test_s3_uris_and_missing_keys(s3: S3Server, tmp_path: Path) -> None:
    store = s3_storage(s3)
    s3.client().put_object(Bucket="other", Key="x/table.csv", Body=b"a,b\n")
    assert store.fetch("s3://other/x/table.csv", tmp_path / "t.csv").read_bytes() == b"a,b\n"
    with pytest.raises(NotFoundError, match="'in/missing.h5ad' not found in bucket 'scarches'"):
        store.fetch("in/missing.h5ad", tmp_path / "m.h5ad")
    assert not (tmp_path / "m.h5ad").exists()
    with pytest.raises(NotFoundError, match="s3://other/missing"):
        store.fetch("s3://other/missing", tmp_path / "m.h5ad")
    with pytest.raises(NotFoundError, match="models/none"):
        store.fetch_tree("models/none", tmp_path / "none")
    for bad in ("s3://", "s3://bucket-only", "http://host/key", ""):
        with pytest.raises(ConfigError):
            store.fetch(bad, tmp_path / "b")


@pytest.mark.s3
def test_s3_model_trees(s3: S3Server, tmp_path: Path) -> None:
    store = s3_storage(s3)
    folder = model_folder(tmp_path)
    assert store.publish_tree(folder, "models/a/model.pt") == ["s3://scarches/models/a/model.pt"]
    assert sorted(store.publish_tree(folder, "models/b/")) == [
        "s3://scarches/models/b/extra/notes.txt",
        "s3://scarches/models/b/model.pt",
    ]
    single = store.fetch_tree("models/a/model.pt", tmp_path / "one")
    assert single == tmp_path / "one" / "model.pt" and single.read_bytes() == b"weights"
    tree = store.fetch_tree("models/b", tmp_path / "two")
    assert (tree / "model.pt").read_bytes() == b"weights" and (tree / "extra" / "notes.txt").read_text() == "n"
    (tmp_path / "cells.tsv").write_text("a\tb\n")
    store.publish(tmp_path / "cells.tsv", "out/cells.tsv")
    assert s3.client().head_object(Bucket="scarches", Key="out/cells.tsv")["ContentType"] == "text/tab-separated-values"


@pytest.mark.s3
def test_s3_wrong_credentials_are_refused(s3: S3Server, tmp_path: Path) -> None:
    s3_storage(s3).check()
    wrong = S3Storage(s3.bucket, s3.endpoint, s3.access_key, "not-the-secret")
    with pytest.raises(StorageError):
        wrong.check()
    with pytest.raises(StorageError, match="refused access"):
        wrong.fetch("in/big.h5ad", tmp_path / "x")
    unknown = S3Storage(s3.bucket, s3.endpoint, "nobody", "nothing")
    with pytest.raises(StorageError):
        unknown.exists("in/big.h5ad")
    with pytest.raises(StorageError, match="does not exist"):
        S3Storage("no-such-bucket", s3.endpoint, s3.access_key, s3.secret_key).check()
    with pytest.raises(StorageError):
        S3Storage("scarches", "http://127.0.0.1:9", "k", "s").check()  # nothing listens on the discard port
