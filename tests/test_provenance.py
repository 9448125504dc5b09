"""manifest.json: versions, hardware, seed, config and checksums that match the files; atomic JSON writes."""

import hashlib
import json
from importlib import metadata

import numpy as np

from helpers import fast_config
from scarches_api.provenance import build_manifest, checksum, write_json_atomic


def test_manifest_records_versions_hardware_config_and_checksums(tmp_path):
    query = tmp_path / "query.h5ad"
    query.write_bytes(b"query bytes")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.pt").write_bytes(b"weights")
    (model / "sub" / "extra.json").write_text("{}")
    table = tmp_path / "result.tsv"
    table.write_text("cell_id\tx\n")
    config = fast_config("scVI").used()

    inputs = {"query": query, "reference": tmp_path / "s3-only"}
    manifest = build_manifest(config, inputs, {"table": table, "model": model}, seed=7)

    assert manifest["seed"] == 7 and manifest["config"] == config
    versions = manifest["versions"]
    for name in ("scarches_api", "scvi-tools", "torch", "anndata", "scanpy", "numpy", "python"):
        assert versions[name], name
    assert versions["scvi-tools"] == metadata.version("scvi-tools")
    assert manifest["hardware"]["cpu_count"] >= 1 and isinstance(manifest["hardware"]["gpus"], list)
    assert manifest["inputs"]["query"]["sha256"] == hashlib.sha256(b"query bytes").hexdigest()
    assert manifest["inputs"]["reference"]["missing"] is True
    assert manifest["outputs"]["table"]["bytes"] == len("cell_id\tx\n")
    files = manifest["outputs"]["model"]["files"]
    assert list(files) == ["model.pt", "sub/extra.json"]
    assert files["model.pt"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert manifest["created_utc"].endswith("Z")
    json.dumps(manifest)  # plain JSON


def test_write_json_atomic(tmp_path):
    path = tmp_path / "out" / "manifest.json"
    write_json_atomic(path, {"a": 1})
    values = {"path": tmp_path, "x": np.float32(0.5), "n": np.int64(3), "arr": np.arange(2), "bad": float("nan")}
    write_json_atomic(path, values)
    data = json.loads(path.read_text())
    assert data == {"path": str(tmp_path), "x": 0.5, "n": 3, "arr": [0, 1], "bad": None}
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp file left behind
    assert checksum(path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
