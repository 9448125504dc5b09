"""The mapping end to end on subsampled real data (liu_demo), for each model, and its named steps alone."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers import fast_config, liu_files, liu_split
from scarches_api.errors import InputDataError, ModelLoadError
from scarches_api.io.table import read_table
from scarches_api.mapping import check_input, run_mapping, split_proteins

BASE_COLUMNS = ["cell_id", "x", "y", "batch", "type", "cell_type", "predicted", "uncertainty"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return liu_files(tmp_path_factory.mktemp("liu"), cells_per_batch=150)


def _check_table(table: pd.DataFrame, n_ref: int, n_query: int) -> None:
    assert list(table.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert len(table) == n_ref + n_query
    assert (table["type"] == "reference").sum() == n_ref and (table["type"] == "query").sum() == n_query
    assert set(table.loc[table["type"] == "query", "predicted"]) == {"yes"}
    assert set(table.loc[table["type"] == "reference", "predicted"]) == {"no"}
    assert table["uncertainty"].between(0, 1).all()
    assert np.isfinite(table[["x", "y"]].to_numpy()).all()
    assert table["cell_id"].is_unique
    assert "leiden" not in table.columns  # unwanted_labels default


@pytest.mark.parametrize("model", ["scVI", "scANVI"])
def test_each_model_maps_end_to_end(files, tmp_path, model):
    ref, query = files
    output = tmp_path / "result.tsv"
    stages = []
    result = run_mapping(
        fast_config(model), reference=ref, query=query, output=output, model_out=tmp_path / "model",
        progress=lambda stage, info: stages.append(stage),
    )
    table = read_table(output)
    _check_table(table, 300, 150)
    # Query labels are predicted among the reference's types; the query's own labels are kept aside.
    ref_types = set(table.loc[table["type"] == "reference", "cell_type"])
    assert set(table.loc[table["type"] == "query", "cell_type"]) <= ref_types
    assert table.loc[table["type"] == "query", "query_cell_type"].notna().all()
    assert (tmp_path / "model" / "model.pt").exists()
    assert [s for s in stages if s != "epoch"] == ["check", "reference", "align", "surgery", "train", "predict", "embed", "write"]
    # Every training epoch is reported: reference (scVI 2 + scANVI 1) and query (2).
    assert stages.count("epoch") == {"scVI": 2 + 2, "scANVI": 2 + 1 + 2}[model]
    assert result.summary["genes"] == {"reference": 1000, "query": 1000, "shared": 1000, "share": 1.0, "routes": {"identical": 1000}}


def test_totalvi_with_an_rna_only_query_imputes_every_cells_proteins(files, tmp_path):
    ref, query = files
    rna_only = ad.read_h5ad(query)
    rna_only = rna_only[:, (rna_only.var["feature_types"] == "Gene Expression").to_numpy()].copy()
    query_path = tmp_path / "rna_only.h5ad"
    rna_only.write_h5ad(query_path)
    output = tmp_path / "result.csv"
    run_mapping(fast_config("totalVI"), reference=ref, query=query_path, output=output)
    table = read_table(output)
    _check_table(table, 300, 150)
    proteins = [c for c in table.columns if c.startswith("protein:")]
    assert len(proteins) == 192
    values = table[proteins].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    # Imputed, not copied zeros: query cells got protein values although none were measured.
    assert values[table["type"].to_numpy() == "query"].sum(axis=1).min() > 0


def test_a_pretrained_reference_model_is_used_from_ref_path(files, tmp_path):
    ref, query = files
    first = run_mapping(fast_config("scVI"), reference=ref, query=query, output=tmp_path / "a.tsv", model_out=tmp_path / "m")
    assert first.summary["reference_model"] == "trained"
    # A fine-tuned scVI model is itself a valid reference for scANVI (scArches' from_scvi_model path).
    reference_only = tmp_path / "ref_model"
    from scvi.model import SCVI

    adata = ad.read_h5ad(ref)
    adata, _ = split_proteins(adata, "protein_expression")
    SCVI.setup_anndata(adata, batch_key="Batch")
    SCVI(adata, n_latent=10).save(str(reference_only))
    config = fast_config("scANVI", ref_path=str(reference_only))
    second = run_mapping(config, reference=ref, query=query, output=tmp_path / "b.tsv", ref_model=reference_only / "model.pt")
    assert second.summary["reference_model"] == "pretrained"
    _check_table(second.table, 300, 150)


@pytest.mark.fault("reference model of the wrong kind at ref_path (SCVI for totalVI)")
def test_a_model_of_the_wrong_kind_at_ref_path_is_refused(files, tmp_path, record_property):
    ref, query = files
    run_mapping(fast_config("scVI"), reference=ref, query=query, output=tmp_path / "a.tsv", model_out=tmp_path / "m")
    with pytest.raises(ModelLoadError, match="holds a SCVI model; model 'totalVI' can start from TOTALVI") as err:
        run_mapping(fast_config("totalVI", ref_path=str(tmp_path / "m")), reference=ref, query=query,
                    output=tmp_path / "b.tsv", ref_model=tmp_path / "m")
    assert not (tmp_path / "b.tsv").exists()
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:140]}; "
                                f"output written: {(tmp_path / 'b.tsv').exists()}")


@pytest.mark.fault("legacy (scvi-tools < 0.15) model folder at ref_path")
def test_a_legacy_model_folder_is_refused_with_the_conversion_to_run(files, tmp_path, record_property):
    ref, query = files
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model_params.pt").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="scvi-tools < 0.15.*convert_legacy_save") as err:
        run_mapping(fast_config("scVI", ref_path=str(legacy)), reference=ref, query=query,
                    output=tmp_path / "b.tsv", ref_model=legacy)
    record_property("observed", f"{type(err.value).__name__}: {str(err.value)[:160]}")


@pytest.mark.fault("query missing 300 of the reference's 1000 genes")
def test_partial_gene_overlap_is_padded_and_reported(files, tmp_path, record_property):
    ref, query = files
    adata = ad.read_h5ad(query)
    keep = np.ones(adata.n_vars, dtype=bool)
    keep[:300] = False  # drop 300 of the 1000 genes (the proteins come after them)
    adata[:, keep].copy().write_h5ad(tmp_path / "q.h5ad")
    result = run_mapping(fast_config("scVI"), reference=ref, query=tmp_path / "q.h5ad", output=tmp_path / "r.tsv")
    assert result.summary["genes"]["shared"] == 700 and result.summary["genes"]["share"] == 0.7
    _check_table(result.table, 300, 150)
    genes = result.summary["genes"]
    record_property("observed", f"mapped {len(result.table)} cells; genes shared {genes['shared']} "
                                f"(share {genes['share']}); routes {genes['routes']}")


def test_query_in_versioned_ensembl_ids_maps_onto_a_symbol_reference(files, tmp_path):
    from scarches_api.genes import to_ensembl

    ref, query = files
    adata = ad.read_h5ad(query)
    adata.var_names = to_ensembl(list(adata.var_names), version=7)
    adata.write_h5ad(tmp_path / "q.h5ad")
    result = run_mapping(fast_config("scVI"), reference=ref, query=tmp_path / "q.h5ad", output=tmp_path / "r.tsv")
    genes = result.summary["genes"]
    assert genes["share"] >= 0.97 and genes["routes"]["ensembl_to_symbol"] >= 900
    _check_table(result.table, 300, 150)


@pytest.mark.fault("query with well-formed Ensembl IDs of no human gene")
def test_query_in_unknown_ids_is_refused_with_a_hint(files, tmp_path, record_property):
    ref, query = files
    adata = ad.read_h5ad(query)
    adata.var_names = [f"ENSG9{i:010d}" for i in range(adata.n_vars)]  # well-formed IDs of no human gene
    adata.write_h5ad(tmp_path / "q.h5ad")
    with pytest.raises(InputDataError, match="gene overlap 0% < min_gene_overlap 50%.*ensembl vs symbol.*convert") as info:
        run_mapping(fast_config("scVI"), reference=ref, query=tmp_path / "q.h5ad", output=tmp_path / "r.tsv")
    assert info.value.status_code == 422
    assert not (tmp_path / "r.tsv").exists()
    record_property("observed", f"{info.value.status_code} {type(info.value).__name__}: {str(info.value)[:160]}")


@pytest.mark.fault("condition_key and cell_type_key naming obs columns the data lacks")
def test_missing_condition_and_cell_type_keys_are_named(files, tmp_path, record_property):
    ref, query = files
    with pytest.raises(
        InputDataError, match="reference data has no obs column 'sample' \\(config key 'condition_key'\\)"
    ) as cond:
        run_mapping(fast_config("scVI", condition_key="sample"), reference=ref, query=query, output=tmp_path / "r.tsv")
    with pytest.raises(InputDataError, match="no obs column 'celltype' \\(config key 'cell_type_key'\\)") as cell:
        run_mapping(fast_config("scANVI", cell_type_key="celltype"), reference=ref, query=query, output=tmp_path / "r.tsv")
    record_property("observed", f"{str(cond.value)[:90]}; {str(cell.value)[:90]}")


@pytest.mark.fault("log-normalised query (log1p of the counts)")
def test_log_normalised_query_is_refused(files, tmp_path, record_property):
    ref, query = files
    adata = ad.read_h5ad(query)
    adata.X = adata.X.log1p()
    adata.write_h5ad(tmp_path / "q.h5ad")
    with pytest.raises(InputDataError, match="query data: X does not hold raw counts") as err:
        run_mapping(fast_config("scVI"), reference=ref, query=tmp_path / "q.h5ad", output=tmp_path / "r.tsv")
    record_property("observed", f"{err.value.status_code} {type(err.value).__name__}: {str(err.value)[:160]}")


def test_check_input_moves_proteins_out_of_the_genes():
    reference, _ = liu_split(30)
    config = fast_config("totalVI")
    genes, found = check_input(reference, config, role="reference")
    assert found["proteins"] == 192 and genes.n_vars == 1000 and found["counts_from"] == "X"
    assert genes.obsm["protein_expression"].shape == (reference.n_obs, 192)
    assert genes.var_names.is_unique


def test_a_10x_h5_query_maps_end_to_end(files, tmp_path):
    from scarches_api.io.tenx import write_10x_h5

    ref, query = files
    write_10x_h5(ad.read_h5ad(query), tmp_path / "filtered_feature_bc_matrix.h5")
    result = run_mapping(fast_config("scVI"), reference=ref, query=tmp_path / "filtered_feature_bc_matrix.h5",
                         output=tmp_path / "r.tsv")
    _check_table(result.table, 300, 150)
    # A 10x matrix has no obs columns: its cells form one batch of their own.
    assert set(result.table.loc[result.table["type"] == "query", "batch"]) == {"query"}
    assert result.summary["preflight"]["query"]["format"].startswith("10x")


def test_label_levels_get_their_own_columns_and_agree_with_the_main_level(files, tmp_path):
    from scarches_api.datasets import coarse_label

    ref, query = files
    paths = {}
    for name, path in (("ref", ref), ("query", query)):
        adata = ad.read_h5ad(path)
        adata.obs["coarse"] = adata.obs["mergedcelltype"].astype(str).map(coarse_label)
        paths[name] = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    config = fast_config("scANVI", cell_type_keys=["coarse", "mergedcelltype"])
    table = run_mapping(config, reference=paths["ref"], query=paths["query"], output=tmp_path / "r.tsv").table
    query_rows = table[table["type"] == "query"]
    assert {"cell_type:coarse", "uncertainty:coarse", "query_cell_type:coarse"} <= set(table.columns)
    # The coarse level sums its members' probabilities: never less certain than the fine level, never contradicting.
    assert (query_rows["uncertainty:coarse"] <= query_rows["uncertainty"] + 1e-9).all()
    assert (query_rows["cell_type"].map(coarse_label) == query_rows["cell_type:coarse"]).mean() > 0.9


def test_reports_and_manifest_are_written_next_to_the_table(files, tmp_path):
    import json

    ref, query = files
    result = run_mapping(fast_config("scANVI"), reference=ref, query=query, output=tmp_path / "cells.tsv",
                         model_out=tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "cells.manifest.json", "cells.report.html", "cells.report.json", "cells.tsv"]
    report = json.loads((tmp_path / "cells.report.json").read_text())
    metrics = report["metrics"]
    assert metrics["cells"] == {"reference": 300, "query": 150}
    assert 0 <= metrics["query_with_reference_anchor"] <= 1 and 0 <= metrics["batch_mixing"] <= 1
    assert 0 <= metrics["agreement_with_query_labels"] <= 1 and report["preflight"]["verdict"] == "ok"
    manifest = json.loads((tmp_path / "cells.manifest.json").read_text())
    assert manifest["config"]["model"] == "scANVI" and manifest["seed"] == 0
    assert {"query", "reference"} <= set(manifest["inputs"]) and {"table", "model"} <= set(manifest["outputs"])
    distance = result.table.loc[result.table["type"] == "query", "mapping_distance"]
    assert distance.between(0, 1).all() and result.table.loc[result.table["type"] == "reference", "mapping_distance"].isna().all()
    assert "<img" in (tmp_path / "cells.report.html").read_text()
