"""Reference bundles: built once from real data, rebuilt without pickle, and the fast path that maps against them."""

import json

import anndata as ad
import numpy as np
import pytest

from helpers import fast_config, liu_files
from scarches_api.bundle import BundleCache, read_bundle
from scarches_api.errors import ModelLoadError
from scarches_api.mapping import check_input, run_mapping
from scarches_api.reference import build_reference


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return liu_files(tmp_path_factory.mktemp("bundle-data"), cells_per_batch=150)


@pytest.fixture(scope="module")
def scanvi_bundle(files, tmp_path_factory):
    path, _ = build_reference(fast_config("scANVI"), reference=files[0], out_dir=tmp_path_factory.mktemp("b") / "liu")
    return path


def test_bundle_holds_open_formats_with_checksums(scanvi_bundle):
    names = sorted(p.name for p in scanvi_bundle.iterdir())
    assert names == ["embedding.npy", "latent.npy", "metadata.json", "model_state.pt", "obs.parquet"]
    meta = json.loads((scanvi_bundle / "metadata.json").read_text())
    assert meta["model_class"] == "SCANVI" and meta["scvi_version"].startswith("1.4")
    assert len(meta["var_names"]) == 1000 and meta["n_cells"] == 300
    assert set(meta["checksums"]) == {"embedding.npy", "latent.npy", "model_state.pt", "obs.parquet"}
    assert {"Batch", "mergedcelltype", "Donor"} <= set(meta["obs_columns"])


def test_rebuilt_model_gives_the_stored_latent(scanvi_bundle, files):
    bundle = read_bundle(scanvi_bundle)
    config = fast_config("scANVI")
    adata, _ = check_input(ad.read_h5ad(files[0]), config, role="reference")
    adata.obs["mergedcelltype"] = adata.obs["mergedcelltype"].astype(str)
    latent = bundle.model.get_latent_representation(adata)
    np.testing.assert_allclose(latent, bundle.latent, rtol=1e-4, atol=1e-4)


@pytest.mark.fault("tampered reference bundle (latent.npy changed after its checksum)")
def test_tampered_bundle_is_refused(scanvi_bundle, tmp_path, record_property):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(scanvi_bundle, copy)
    latent = np.load(copy / "latent.npy")
    np.save(copy / "latent.npy", latent + 1)
    with pytest.raises(ModelLoadError, match="latent.npy is missing or does not match its checksum") as err:
        read_bundle(copy)
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


def test_fast_path_gives_the_full_paths_columns_and_rows(scanvi_bundle, files, tmp_path):
    bundle = read_bundle(scanvi_bundle)
    config = fast_config("scANVI")
    fast = run_mapping(config, bundle=bundle, query=files[1], output=tmp_path / "fast.tsv")
    full = run_mapping(config, reference=files[0], query=files[1], output=tmp_path / "full.tsv")
    assert list(fast.table.columns) == list(full.table.columns)
    assert len(fast.table) == len(full.table) == 450
    assert fast.summary["reference_model"] == "bundle" and "embed" in fast.timings
    ref_rows = fast.table[fast.table["type"] == "reference"]
    np.testing.assert_allclose(ref_rows[["x", "y"]].to_numpy(), bundle.embedding, rtol=1e-6)
    # Placed query cells lie within the reference embedding's extent.
    query_xy = fast.table.loc[fast.table["type"] == "query", ["x", "y"]].to_numpy()
    assert (query_xy.min(0) >= bundle.embedding.min(0) - 1e-6).all() and (query_xy.max(0) <= bundle.embedding.max(0) + 1e-6).all()


def test_cache_loads_a_bundle_once_and_again_when_it_changes(scanvi_bundle, tmp_path):
    import os
    import shutil

    cache = BundleCache(max_items=1)
    first = cache.get(scanvi_bundle)
    assert cache.get(scanvi_bundle) is first and cache.loads == 1
    copy = tmp_path / "other"
    shutil.copytree(scanvi_bundle, copy)
    cache.get(copy)  # evicts the first (max one item)
    assert cache.get(scanvi_bundle) is not first and cache.loads == 3
    os.utime(scanvi_bundle / "metadata.json", ns=(1, 1))
    cache.get(scanvi_bundle)
    assert cache.loads == 4


@pytest.mark.parametrize("model", ["scVI", "totalVI"])
def test_other_models_round_trip_through_a_bundle(files, tmp_path, model):
    path, _ = build_reference(fast_config(model), reference=files[0], out_dir=tmp_path / "b")
    bundle = read_bundle(path)
    result = run_mapping(fast_config(model), bundle=bundle, query=files[1], output=tmp_path / "fast.tsv")
    assert len(result.table) == 450
    if model == "totalVI":
        proteins = [c for c in result.table.columns if c.startswith("protein:")]
        assert len(proteins) == 192 and (result.table[proteins].to_numpy() >= 0).all()
