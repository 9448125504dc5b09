"""The 2-D embedding of reference and query cells together: UMAP over a kNN graph of the joint latent space."""

from __future__ import annotations

import anndata as ad
import numpy as np


def umap_embedding(latent: np.ndarray, *, n_neighbors: int, seed: int) -> np.ndarray:
    """UMAP coordinates (n_cells × 2) of the latent space, through scanpy's neighbours graph as the original did."""
    import scanpy as sc

    holder = ad.AnnData(obs={"i": np.arange(latent.shape[0])}, obsm={"X_latent": latent.astype(np.float32)})
    n_neighbors = max(2, min(n_neighbors, latent.shape[0] - 1))
    sc.pp.neighbors(holder, use_rep="X_latent", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(holder, random_state=seed)
    return np.asarray(holder.obsm["X_umap"])
