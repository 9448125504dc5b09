"""Reading .h5ad inputs safely and checking they hold what a mapping needs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarches_api.errors import InputDataError

log = logging.getLogger(__name__)

# Enough cells to judge integrality without touching a large matrix whole.
_COUNT_CHECK_ROWS = 2000


def read_h5ad(path: str | Path, *, role: str) -> ad.AnnData:
    """Read an .h5ad file fully into memory; any failure becomes an InputDataError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{role} data: file {path} does not exist")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for corrupt or foreign files
        raise InputDataError(
            f"{role} data: {path.name} is not a readable .h5ad file ({type(exc).__name__}: {exc}). "
            "Write it with anndata's AnnData.write_h5ad."
        ) from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(f"{role} data: {path.name} has {adata.n_obs} cells and {adata.n_vars} genes; both must be > 0")
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    return adata


def read_h5ad_columns(
    path: str | Path, keep: Callable[[pd.DataFrame], np.ndarray], *, role: str, chunk_cells: int
) -> ad.AnnData | None:
    """Read only the genes ``keep(var)`` selects, ``chunk_cells`` cells at a time, when the file has more cells than
    that; None when it has fewer (or keeps its counts outside X), so the caller reads it whole.

    A query in 30,000 genes against a model of 2,000 then never holds more than a chunk of the 30,000 in memory.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            n_obs = f["obs"][f["obs"].attrs.get("_index", "_index")].shape[0] if "obs" in f else 0
            elsewhere = ("layers" in f and len(f["layers"]) > 0) or "raw" in f
    except Exception:
        return None  # the whole-file reader names what is wrong
    if n_obs <= chunk_cells or elsewhere:
        return None
    try:
        backed = ad.read_h5ad(path, backed="r")
        var = backed.var.copy()
        var.index = var.index.astype(str)
        mask = np.asarray(keep(var), dtype=bool)
        columns = np.flatnonzero(mask)
        blocks = []
        for start in range(0, backed.n_obs, chunk_cells):
            block = backed.X[start : start + chunk_cells]
            block = block[:, columns] if sp.issparse(block) else sp.csr_matrix(np.asarray(block)[:, columns])
            blocks.append(sp.csr_matrix(block, dtype=np.float32))
        adata = ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=backed.obs.copy(), var=var.iloc[columns].copy(),
                           obsm={k: np.asarray(v) for k, v in backed.obsm.items()}, uns=dict(backed.uns))
        backed.file.close()
    except Exception as exc:
        raise InputDataError(
            f"{role} data: {path.name} is not a readable .h5ad file ({type(exc).__name__}: {exc}). "
            "Write it with anndata's AnnData.write_h5ad."
        ) from None
    adata.obs_names = adata.obs_names.astype(str)
    adata.uns["read_in_chunks"] = {"cells": int(adata.n_obs), "chunk_cells": chunk_cells, "chunks": len(blocks),
                                   "genes_in_file": int(mask.size), "genes_kept": int(mask.sum())}
    log.info("%s data: read %d cells in %d chunks, %d of %d genes", role, adata.n_obs, len(blocks), mask.sum(), mask.size)
    return adata


def _sample_values(matrix, rows: int) -> np.ndarray:
    block = matrix[: min(rows, matrix.shape[0])]
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block).ravel()


def is_counts(matrix) -> bool:
    """True when the (first rows of the) matrix hold non-negative integers."""
    values = _sample_values(matrix, _COUNT_CHECK_ROWS)
    if values.size == 0:
        return True
    return bool(values.min() >= 0 and np.all(np.equal(np.mod(values, 1), 0)))


def use_counts(adata: ad.AnnData, *, role: str) -> str:
    """Make ``adata.X`` hold raw counts, taken from X, ``layers['counts']`` or ``raw``; return which was used.

    Models of the scVI family need counts; log-normalised data trains silently into a wrong model, so it is refused.
    """
    if is_counts(adata.X):
        return "X"
    # layers['counts'] first (the scverse convention), then any other layer holding integers.
    for name in sorted(adata.layers.keys(), key=lambda n: n != "counts"):
        if is_counts(adata.layers[name]):
            adata.X = adata.layers[name].copy()
            return f"layers['{name}']"
    if adata.raw is not None and adata.raw.shape[1] == adata.n_vars and is_counts(adata.raw.X):
        adata.X = adata.raw.X.copy()
        return "raw.X"
    values = _sample_values(adata.X, _COUNT_CHECK_ROWS)
    raise InputDataError(
        f"{role} data: X does not hold raw counts (values range {values.min():.3g}..{values.max():.3g} and are not all "
        "non-negative integers; it looks normalised or log-transformed). Provide the raw integer UMI counts in X, "
        "in layers['counts'] or in raw."
    )


def require_obs_key(adata: ad.AnnData, key: str, *, role: str, config_key: str) -> None:
    """Fail with a message naming the config key when an obs column is missing."""
    if key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns[:20])) or "(none)"
        raise InputDataError(
            f"{role} data has no obs column '{key}' (config key '{config_key}'). Columns present: {cols}. "
            f"Set '{config_key}' to the column that holds it."
        )
