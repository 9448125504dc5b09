"""A query larger than ``query_chunk_cells`` is read in chunks keeping only the reference's genes, and maps the same."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers import fast_config, liu_files
from scarches_api.genes import to_ensembl
from scarches_api.mapping import run_mapping


def test_a_large_query_is_read_in_chunks_of_the_reference_genes_and_maps_the_same(tmp_path) -> None:
    reference, query = liu_files(tmp_path / "liu", cells_per_batch=150)
    adata = ad.read_h5ad(query)
    # 3,000 genes the reference lacks (what a whole-transcriptome query carries) and the rest in versioned Ensembl IDs.
    rng = np.random.default_rng(0)
    extra = ad.AnnData(sp.csr_matrix(rng.poisson(0.3, size=(adata.n_obs, 3000)).astype(np.float32)),
                       obs=adata.obs[[]], var=pd.DataFrame({"feature_types": "Gene Expression"},
                                                           index=[f"NOTINREF{i}" for i in range(3000)]))
    wide = ad.concat([adata, extra], axis=1, merge="first")
    wide.obs = adata.obs.copy()
    genes = (wide.var["feature_types"] == "Gene Expression").to_numpy()
    names = np.asarray(wide.var_names, dtype=object)
    names[genes] = to_ensembl(list(names[genes]), version=3)
    wide.var_names = names
    wide.write_h5ad(tmp_path / "wide.h5ad")

    whole = run_mapping(fast_config("scVI"), reference=reference, query=tmp_path / "wide.h5ad", output=tmp_path / "a.tsv")
    chunked = run_mapping(fast_config("scVI", query_chunk_cells=40), reference=reference, query=tmp_path / "wide.h5ad",
                          output=tmp_path / "b.tsv")

    read = chunked.summary["preflight"]["query"]["read_in_chunks"]
    assert read["chunks"] == 4 and read["cells"] == 150 and read["genes_in_file"] == wide.n_vars
    assert read["genes_kept"] == wide.n_vars - 3000  # the reference's 1000 genes (once harmonised) and the proteins
    assert "read_in_chunks" not in whole.summary["preflight"]["query"]
    assert chunked.summary["genes"]["shared"] == whole.summary["genes"]["shared"] == 1000
    # Same genes in the same order, same seed: the same model and the same labels.
    pd.testing.assert_frame_equal(chunked.table, whole.table)
