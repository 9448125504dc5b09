"""The fast path over HTTP: ref_path names a reference bundle in S3; the reference data is never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FAST_EPOCHS, fast_config
from scarches_api.reference import build_reference

BUNDLE_KEY = "bundles/liu-scanvi"


@pytest.fixture(scope="module")
def bundle_in_s3(s3_server, liu_in_s3, tmp_path_factory) -> str:
    path, _ = build_reference(fast_config("scANVI"), reference=liu_in_s3["reference"], out_dir=tmp_path_factory.mktemp("b") / "liu")
    client = s3_server.client()
    for file in Path(path).iterdir():
        client.upload_file(str(file), s3_server.bucket, f"{BUNDLE_KEY}/{file.name}")
    return BUNDLE_KEY


def _body(keys, tag: str, bundle: str, **extra) -> dict:
    return {
        "model": "scANVI",
        "ref_path": bundle,
        "query_data": keys["query"],
        "output_path": f"results/{tag}/cells.tsv",
        "atlas": "liu_demo",
        **FAST_EPOCHS,
        **extra,
    }


@pytest.mark.s3
@pytest.mark.slow
def test_a_bundle_query_needs_no_reference_data_and_a_second_downloads_only_the_query(
    api, keys, bundle_in_s3, read_table, check_table
) -> None:
    with api.client() as client:
        first = client.post("/query", json=_body(keys, "bundle-1", bundle_in_s3))
        assert first.status_code == 200, first.text
        assert first.json()["result"]["summary"]["reference_model"] == "bundle"
        downloads_before = first.json()["result"]["downloads"]
        second = client.post("/query", json=_body(keys, "bundle-2", bundle_in_s3))
        assert second.status_code == 200, second.text
    check_table(read_table("results/bundle-1/cells.tsv"))
    table = read_table("results/bundle-2/cells.tsv")
    check_table(table)
    # The second query fetched the query file and nothing of the bundle (5 files the first time).
    assert second.json()["result"]["downloads"] - downloads_before == 1
    assert "reference_data" not in second.json() or second.json()["reference_data"] is None


@pytest.mark.s3
@pytest.mark.slow
def test_full_recompute_against_a_bundle_uses_the_reference_data(api, keys, bundle_in_s3, read_table, check_table) -> None:
    with api.client() as client:
        answer = client.post(
            "/query", json=_body(keys, "bundle-full", bundle_in_s3, full_recompute=True, reference_data=keys["reference"])
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["summary"]["embedding"] == "UMAP of reference and query"
    check_table(read_table("results/bundle-full/cells.tsv"))


@pytest.mark.s3
def test_a_bundle_of_another_model_is_refused(api, keys, bundle_in_s3) -> None:
    with api.client() as client:
        answer = client.post("/query", json={**_body(keys, "bundle-wrong", bundle_in_s3), "model": "scVI"})
    assert answer.status_code == 422
    assert "bundle holds a SCANVI model, but model 'scVI'" in answer.json()["error"]


def test_full_recompute_without_reference_data_is_refused(api, keys, bundle_in_s3) -> None:
    with api.client() as client:
        answer = client.post("/query", json=_body(keys, "bundle-norf", bundle_in_s3, full_recompute=True))
    assert answer.status_code == 422
    assert "missing required key 'reference_data'" in answer.json()["error"]
