"""Reading 10x Genomics Cell Ranger ``filtered_feature_bc_matrix.h5`` files, and choosing a reader by content.

Read with h5py directly (not scanpy) so a pre-flight check does not pay scanpy's import, and so a broken file gets
a message naming what is missing. Cell Ranger v3+ (``matrix/features``) is the target; v2 (one group per genome,
``genes``/``gene_names``) is read too, since it costs a few lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarches_api.errors import InputDataError
from scarches_api.io.h5ad import read_h5ad, read_h5ad_columns

ACCEPTED_FORMATS = ".h5ad (AnnData) or a 10x Genomics Cell Ranger filtered_feature_bc_matrix.h5"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

VarNames = Literal["gene_symbols", "gene_ids"]


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    values = dataset[()]
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values.astype(str).astype(object)


def _optional(group: h5py.Group, name: str, n: int, default: str) -> np.ndarray:
    return _strings(group[name]) if name in group else np.full(n, default, dtype=object)


def _matrix_group(f: h5py.File) -> tuple[h5py.Group, bool]:
    """The group holding the matrix and whether it is the v3 layout."""
    if "matrix" in f and "features" in f["matrix"]:
        return f["matrix"], True
    for name in f:  # v2: one group per genome reference, e.g. 'GRCh38'
        group = f[name]
        if isinstance(group, h5py.Group) and {"barcodes", "genes", "gene_names", "indptr"} <= set(group):
            return group, False
    raise KeyError("no 'matrix/features' group (Cell Ranger v3+) and no genome group with 'genes' (v2)")


def read_10x_h5(path: str | Path, role: str, *, var_names: VarNames = "gene_symbols") -> ad.AnnData:
    """Read a Cell Ranger ``filtered_feature_bc_matrix.h5`` into cells × features counts.

    ``var_names`` are gene symbols (or the gene ids with ``var_names="gene_ids"``); ``var['gene_ids']``,
    ``var['feature_types']`` ('Gene Expression', 'Antibody Capture', ...) and ``var['genome']`` keep the rest, so
    antibody-capture features are found as proteins. Raises InputDataError naming the file when it can't be read.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{role} data: file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            group, v3 = _matrix_group(f)
            n_features, n_cells = (int(x) for x in group["shape"][()])
            # Cell Ranger stores features × barcodes in CSC: each barcode's column is a CSR row of the transpose.
            matrix = sp.csr_matrix(
                (group["data"][()].astype(np.float32), group["indices"][()], group["indptr"][()]),
                shape=(n_cells, n_features),
            )
            barcodes = _strings(group["barcodes"])
            if v3:
                feats = group["features"]
                ids, names = _strings(feats["id"]), _strings(feats["name"])
                types = _optional(feats, "feature_type", n_features, "Gene Expression")
                genome = _optional(feats, "genome", n_features, "")
            else:
                ids, names = _strings(group["genes"]), _strings(group["gene_names"])
                types = np.full(n_features, "Gene Expression", dtype=object)
                genome = np.full(n_features, group.name.strip("/"), dtype=object)
    except InputDataError:
        raise
    except Exception as exc:  # h5py, numpy and scipy raise many types for foreign or truncated files
        raise InputDataError(
            f"{role} data: {path.name} is not a readable 10x Genomics .h5 file ({type(exc).__name__}: {exc}). "
            f"Provide Cell Ranger's filtered_feature_bc_matrix.h5 (v3 or later) or an .h5ad file."
        ) from None
    if len(barcodes) != n_cells or len(ids) != n_features:
        raise InputDataError(
            f"{role} data: {path.name} is inconsistent ({len(barcodes)} barcodes and {len(ids)} features for a "
            f"{n_features} × {n_cells} matrix). Re-export it with Cell Ranger."
        )
    if n_cells == 0 or n_features == 0:
        raise InputDataError(f"{role} data: {path.name} has {n_cells} cells and {n_features} features; both must be > 0")
    var = pd.DataFrame(
        {"gene_ids": ids, "gene_symbols": names, "feature_types": types, "genome": genome},
        index=pd.Index(ids if var_names == "gene_ids" else names, dtype=str),
    )
    adata = ad.AnnData(X=matrix, obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)), var=var)
    adata.uns["input_format"] = "10x_h5_v3" if v3 else "10x_h5_v2"
    return adata


def write_10x_h5(adata: ad.AnnData, path: str | Path, *, genome: str = "GRCh38") -> Path:
    """Write counts in the Cell Ranger v3 ``filtered_feature_bc_matrix.h5`` layout (for tests and demos).

    Feature ids come from ``var['gene_ids']`` (else the var names), types from ``var['feature_types']``
    (else 'Gene Expression').
    """
    path = Path(path)
    names = adata.var_names.astype(str).to_numpy()
    ids = adata.var["gene_ids"].astype(str).to_numpy() if "gene_ids" in adata.var else names
    types = (
        adata.var["feature_types"].astype(str).to_numpy()
        if "feature_types" in adata.var
        else np.full(adata.n_vars, "Gene Expression")
    )
    csr = sp.csr_matrix(adata.X)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(adata.obs_names.astype(str), dtype="S"))
        m.create_dataset("data", data=csr.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=csr.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=csr.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([adata.n_vars, adata.n_obs], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.array(ids, dtype="S"))
        feats.create_dataset("name", data=np.array(names, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(types, dtype="S"))
        feats.create_dataset("genome", data=np.array([genome] * adata.n_vars, dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def input_format(path: str | Path) -> Literal["h5ad", "10x_h5"] | None:
    """'h5ad' or '10x_h5' by the file's content (an HDF5 file's top-level groups), else None."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            if raw.read(8) != _HDF5_SIGNATURE:
                return None
        with h5py.File(path, "r") as f:
            keys = set(f)
            if "matrix" in keys:
                return "10x_h5"
            if "X" in keys or {"obs", "var"} <= keys:
                return "h5ad"
            if any(isinstance(f[k], h5py.Group) and "gene_names" in f[k] for k in keys):
                return "10x_h5"
    except OSError:
        return None
    return None


def read_input(
    path: str | Path, role: str, *, keep: Callable[[pd.DataFrame], np.ndarray] | None = None, chunk_cells: int = 0
) -> ad.AnnData:
    """Read a query or reference in any accepted format, chosen by content (then by extension).

    Sets ``uns['input_format']`` to 'h5ad', '10x_h5_v3' or '10x_h5_v2'. With ``keep`` (var → mask), an .h5ad of more
    than ``chunk_cells`` cells is read in chunks keeping only those genes. Raises InputDataError naming the accepted
    formats for anything else.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{role} data: file {path} does not exist")
    kind = input_format(path)
    if kind is None:
        # A truncated file has lost the layout but keeps its name: let the named reader say what is wrong.
        suffix = path.suffix.lower()
        kind = "h5ad" if suffix == ".h5ad" else "10x_h5" if suffix == ".h5" else None
    if kind == "10x_h5":
        return read_10x_h5(path, role)
    if kind == "h5ad":
        adata = read_h5ad_columns(path, keep, role=role, chunk_cells=chunk_cells) if keep is not None else None
        adata = adata if adata is not None else read_h5ad(path, role=role)
        adata.uns["input_format"] = "h5ad"
        return adata
    raise InputDataError(
        f"{role} data: {path.name} is in no accepted format. Provide {ACCEPTED_FORMATS} with raw counts."
    )
