"""10x Genomics .h5 input: a real liu_demo subsample written in Cell Ranger's layout and read back; format dispatch."""

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import liu_split
from scarches_api.errors import InputDataError
from scarches_api.genes import to_ensembl
from scarches_api.io.tenx import read_10x_h5, read_input, write_10x_h5


@pytest.fixture(scope="module")
def query():
    _, query = liu_split(40)
    query.var["gene_ids"] = to_ensembl(query.var_names)  # proteins keep their names as ids, as Cell Ranger does
    return query


def write_cellranger_v3(adata, path):
    """Cell Ranger v3 layout written from its own perspective: a features × barcodes CSC matrix."""
    features_by_barcodes = sp.csc_matrix(sp.csr_matrix(adata.X).T)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"] = features_by_barcodes.data.astype(np.int32)
        m["indices"] = features_by_barcodes.indices.astype(np.int64)
        m["indptr"] = features_by_barcodes.indptr.astype(np.int64)
        m["shape"] = np.array(features_by_barcodes.shape, dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array(adata.var["gene_ids"], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")
        feats["feature_type"] = np.array(adata.var["feature_types"], dtype="S")
        feats["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
    return path


def test_reads_cellranger_v3_with_proteins(query, tmp_path):
    adata = read_10x_h5(write_cellranger_v3(query, tmp_path / "filtered_feature_bc_matrix.h5"), "query")
    assert adata.shape == query.shape
    assert list(adata.obs_names) == list(query.obs_names)
    assert list(adata.var_names) == list(query.var_names)  # symbols
    assert list(adata.var["gene_ids"]) == list(query.var["gene_ids"])
    assert (adata.var["feature_types"] == "Antibody Capture").sum() == 192
    assert np.array_equal(adata.X.toarray(), query.X.toarray())
    assert adata.uns["input_format"] == "10x_h5_v3"
    by_id = read_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", "query", var_names="gene_ids")
    assert by_id.var_names[0].startswith("ENSG")


def test_writer_round_trips(query, tmp_path):
    adata = read_input(write_10x_h5(query, tmp_path / "q.h5"), "query")
    assert np.array_equal(adata.X.toarray(), query.X.toarray())
    assert list(adata.var["feature_types"]) == list(query.var["feature_types"])


def test_reads_cellranger_v2(query, tmp_path):
    genes = query[:, query.var["feature_types"] == "Gene Expression"]
    csc = sp.csc_matrix(sp.csr_matrix(genes.X).T)
    with h5py.File(tmp_path / "v2.h5", "w") as f:
        g = f.create_group("GRCh38")
        g["barcodes"] = np.array(genes.obs_names, dtype="S")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape)
        g["genes"], g["gene_names"] = np.array(genes.var["gene_ids"], dtype="S"), np.array(genes.var_names, dtype="S")
    adata = read_input(tmp_path / "v2.h5", "query")
    assert adata.shape == genes.shape and adata.uns["input_format"] == "10x_h5_v2"
    assert np.array_equal(adata.X.toarray(), genes.X.toarray())


def test_read_input_dispatches_on_content(query, tmp_path):
    query.write_h5ad(tmp_path / "q.h5ad")
    assert read_input(tmp_path / "q.h5ad", "query").uns["input_format"] == "h5ad"
    (tmp_path / "q.h5ad").rename(tmp_path / "upload.bin")  # S3 keys and uploads need not keep their extension
    assert read_input(tmp_path / "upload.bin", "query").shape == query.shape
    write_10x_h5(query, tmp_path / "counts.data")
    assert read_input(tmp_path / "counts.data", "query").uns["input_format"] == "10x_h5_v3"


@pytest.mark.fault("input in no accepted format (CSV), truncated 10x .h5, HDF5 without a 10x layout, missing .h5")
def test_unreadable_inputs_are_named(query, tmp_path, record_property):
    seen = []
    csv = tmp_path / "query.csv"
    csv.write_text("gene,cell1\nCD3E,4\n")
    with pytest.raises(
        InputDataError, match=r"query.csv is in no accepted format.*\.h5ad.*filtered_feature_bc_matrix\.h5"
    ) as err:
        read_input(csv, "query")
    seen.append(str(err.value))
    h5 = write_10x_h5(query, tmp_path / "broken.h5")
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(InputDataError, match="broken.h5 is not a readable 10x Genomics .h5 file") as err:
        read_input(h5, "query")
    seen.append(str(err.value))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.arange(3)
    with pytest.raises(InputDataError, match="other.h5 is not a readable 10x Genomics .h5 file.*Cell Ranger") as err:
        read_input(tmp_path / "other.h5", "query")
    seen.append(str(err.value))
    with pytest.raises(InputDataError, match="does not exist") as err:
        read_input(tmp_path / "nope.h5", "query")
    seen.append(str(err.value))
    short = [text.replace(f"{tmp_path}/", "").split(": ", 1)[-1][:45] for text in seen]  # no role, no temp folder
    record_property("observed", "; ".join(short))
