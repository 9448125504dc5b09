"""Pre-flight check on real liu_demo splits: verdicts, fix-it messages, harmonised overlap, protein panel, cost."""

import json
import time

import numpy as np
import pytest
import scipy.sparse as sp

from helpers import fast_config, liu_split
from scarches_api.errors import InputDataError
from scarches_api.genes import to_ensembl
from scarches_api.io.tenx import write_10x_h5
from scarches_api.preflight import (
    EMBED_SECONDS_PER_7K_CELLS,
    SECONDS_PER_EPOCH_5K_CELLS_2K_GENES,
    STARTUP_SECONDS,
    estimate_cost,
    preflight,
)


@pytest.fixture
def split():
    return liu_split(60)


def _genes_only(adata):
    return adata[:, adata.var["feature_types"] != "Antibody Capture"].copy()


def _log_normalise(adata):
    dense = adata.X.toarray()
    adata.X = sp.csr_matrix(np.log1p(dense / np.maximum(dense.sum(1, keepdims=True), 1) * 1e4))
    return adata


def test_ok_on_real_split(split):
    reference, query = split
    start = time.perf_counter()
    report = preflight(fast_config("scVI"), query=query, reference=reference)
    assert time.perf_counter() - start < 5
    assert report.verdict == "ok" and report.reasons == []
    data = json.loads(json.dumps(report.to_dict()))  # the report is plain JSON
    assert data["query"]["cells"] == query.n_obs and data["query"]["genes"] == 1000 and data["query"]["proteins"] == 192
    assert data["query"]["counts"]["counts_from"] == "X" and data["query"]["counts"]["x_range"][0] == 0
    assert data["query"]["condition_key"]["top_values"] == {"B3": query.n_obs}
    assert data["reference"]["cell_type_key"]["present"] and data["reference"]["cell_type_key"]["n_values"] > 5
    assert data["genes"]["overlap_before"] == data["genes"]["overlap_after"] == 1.0
    assert data["genes"]["query_id_type"]["kind"] == "symbol"
    assert data["cost"]["seconds"] > 0 and data["cost"]["peak_memory_mb"] > 600
    assert data["proteins"] is None  # scVI: no protein check
    report.raise_if_error()


@pytest.mark.fault("log-normalised query (pre-flight check)")
def test_log_normalised_query_is_refused_with_the_fix(split, record_property):
    reference, query = split
    report = preflight(fast_config("scVI"), query=_log_normalise(query), reference=reference)
    assert report.verdict == "error"
    (reason,) = report.reasons
    assert "query X holds log-normalised values (range 0.." in reason
    assert "provide the raw integer UMI counts in X, layers['counts'] or raw" in reason
    with pytest.raises(InputDataError, match="log-normalised") as caught:
        report.raise_if_error()
    assert caught.value.status_code == 422 and caught.value.details["verdict"] == "error"
    record_property("observed", f"verdict {report.verdict}; raised {caught.value.status_code}: {reason[:140]}")


def test_counts_found_in_a_layer(split):
    reference, query = split
    query.layers["counts"] = query.X.copy()
    report = preflight(fast_config("scVI"), query=_log_normalise(query), reference=reference)
    assert report.verdict == "ok"
    assert report.query["counts"]["counts_from"] == "layers['counts']"
    assert any(i.code == "query_counts_elsewhere" for i in report.issues)


@pytest.mark.fault("condition_key / cell_type_key naming obs columns the data lacks (pre-flight)")
def test_missing_key_is_named(split, record_property):
    reference, query = split
    report = preflight(fast_config("scVI", condition_key="study"), query=query, reference=reference)
    assert report.verdict == "error"
    assert any("obs column 'study' missing from the query (config key condition_key)" in r for r in report.reasons)
    assert any("missing from the reference" in r for r in report.reasons)
    study = report
    report = preflight(fast_config("scVI", cell_type_key="celltype"), query=query, reference=reference)
    assert report.verdict == "error" and "config key cell_type_key" in report.reasons[0]
    record_property("observed", f"{study.verdict}: {study.reasons[0][:80]}; {report.verdict}: {report.reasons[0][:80]}")


@pytest.mark.fault("query sharing 30% / 60% of the reference's genes (pre-flight)")
def test_low_overlap_is_an_error_and_marginal_overlap_a_warning(split, record_property):
    reference, query = split
    genes = _genes_only(query)
    report = preflight(fast_config("scVI"), query=genes[:, :300].copy(), reference=reference)
    assert report.verdict == "error"
    assert any("gene overlap 30% < min_gene_overlap 50%" in r for r in report.reasons)
    low = next(r for r in report.reasons if "gene overlap" in r)
    low_verdict = report.verdict
    report = preflight(fast_config("scVI"), query=genes[:, :600].copy(), reference=reference)
    assert report.verdict == "warning" and "close to min_gene_overlap" in report.reasons[0]
    record_property("observed", f"30%: {low_verdict}: {low[:80]}; 60%: {report.verdict}: {report.reasons[0][:80]}")


def test_ensembl_query_overlaps_after_harmonisation(split):
    reference, query = split
    query = _genes_only(query)
    symbol_overlap = preflight(fast_config("scVI"), query=query, reference=reference).genes["overlap_after"]
    query.var_names = to_ensembl(query.var_names, version=4)
    report = preflight(fast_config("scVI"), query=query, reference=reference)
    genes = report.genes
    assert genes["query_id_type"]["kind"] == "ensembl_versioned"
    assert genes["overlap_before"] < 0.05
    assert genes["overlap_after"] >= symbol_overlap - 0.01
    assert genes["routes"]["ensembl_to_symbol"] > 850
    assert report.verdict == "ok" and any(i.code == "genes_harmonised" for i in report.issues)
    assert report.harmonisation.mapping[query.var_names[0]] == reference.var_names[0]


@pytest.mark.fault("totalVI with an RNA-only query; totalVI with a reference lacking protein counts (pre-flight)")
def test_bundle_reference_and_proteins(split, record_property):
    reference, query = split
    genes = list(_genes_only(reference).var_names)
    proteins = list(reference.var_names[reference.var["feature_types"] == "Antibody Capture"])
    config = fast_config("totalVI")
    report = preflight(config, query=query, reference_genes=genes, reference_obs=reference.obs, protein_names=proteins)
    assert report.verdict == "ok" and report.reference["source"] == "bundle"
    assert report.proteins["shared"] == 192 and report.proteins["share_of_reference"] == 1.0
    rna_only = preflight(config, query=_genes_only(query), reference_genes=genes, reference_obs=reference.obs,
                         protein_names=proteins)
    assert rna_only.verdict == "warning" and "no protein counts" in rna_only.reasons[0]
    no_panel = preflight(config, query=query, reference=_genes_only(reference))
    assert no_panel.verdict == "error" and "totalVI needs the reference's protein counts" in no_panel.reasons[0]
    record_property("observed", f"RNA-only query: {rna_only.verdict}: {rna_only.reasons[0][:70]}; no panel: "
                                f"{no_panel.verdict}: {no_panel.reasons[0][:70]}")


@pytest.mark.fault("10x query without the batch column; a text file given as .h5ad (pre-flight)")
def test_reads_paths_including_10x(split, tmp_path, record_property):
    reference, query = split
    reference.write_h5ad(tmp_path / "reference.h5ad")
    path = write_10x_h5(query, tmp_path / "filtered_feature_bc_matrix.h5")
    report = preflight(fast_config("scVI", condition_key="Batch"), query=path, reference=tmp_path / "reference.h5ad")
    # A 10x file has no batch column: the report says so instead of failing.
    assert report.query["format"] == "10x_h5_v3" and report.query["proteins"] == 192
    assert report.verdict == "error" and "obs column 'Batch' missing from the query" in report.reasons[0]
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    with pytest.raises(InputDataError, match="bad.h5ad") as err:
        preflight(fast_config("scVI"), query=tmp_path / "bad.h5ad", reference=reference)
    record_property("observed", f"10x: {report.verdict}: {report.reasons[0][:70]}; bad.h5ad: "
                                f"{type(err.value).__name__}: {str(err.value)[:70]}")


def test_cost_model():
    seconds, peak = estimate_cost("scVI", 0, 5000, 2000, 10, embed_cells=7000, density=0.1)
    assert seconds == pytest.approx(STARTUP_SECONDS + 10 * SECONDS_PER_EPOCH_5K_CELLS_2K_GENES + EMBED_SECONDS_PER_7K_CELLS)
    more, bigger = estimate_cost("scVI", 20_000, 5000, 2000, 10, ref_epochs=100, density=0.1)
    assert more > seconds and bigger > peak > 600
