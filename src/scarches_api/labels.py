"""Label transfer and placement from reference to query cells through their nearest reference neighbours.

One kNN search serves both: the label probabilities (scArches' ``weighted_knn_transfer`` kernel) and the query cells'
2-D position inside a stored reference embedding (the same weights over the neighbours' coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors


@dataclass
class LabelCall:
    """Per query cell: the called label, its uncertainty (0..1) and the probability of every label."""

    label: np.ndarray
    uncertainty: np.ndarray
    probabilities: pd.DataFrame


@dataclass
class Neighbours:
    """The k nearest reference cells of each query cell, and their kernel weights (rows sum to 1)."""

    indices: np.ndarray
    distances: np.ndarray
    weights: np.ndarray


class ReferenceIndex:
    """A nearest-neighbour index over reference latent coordinates; built once, queried per mapping."""

    def __init__(self, latent: np.ndarray) -> None:
        self.size = len(latent)
        self._index = NearestNeighbors().fit(np.asarray(latent, dtype=np.float32))

    def neighbours(self, query_latent: np.ndarray, k: int) -> Neighbours:
        k = max(1, min(k, self.size))
        distances, indices = self._index.kneighbors(np.asarray(query_latent, dtype=np.float32), n_neighbors=k)
        return Neighbours(indices=indices, distances=distances, weights=kernel_weights(distances))


def kernel_weights(distances: np.ndarray) -> np.ndarray:
    """Gaussian weights whose width adapts to each cell's neighbour distances (scArches' weighted kNN transfer).

    A cell whose neighbours are all about as far gets near-uniform weights; close neighbours count more.
    """
    spread = distances.std(axis=1, keepdims=True)
    width = (2.0 / np.maximum(spread, 1e-12)) ** 2
    weights = np.exp(-distances / width)
    return weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def label_probabilities(neighbours: Neighbours, reference_labels: np.ndarray) -> pd.DataFrame:
    """Per query cell, the kernel-weighted share of its neighbours carrying each label."""
    classes, codes = np.unique(np.asarray(reference_labels, dtype=str), return_inverse=True)
    n, k = neighbours.indices.shape
    probs = np.zeros((n, len(classes)))
    rows = np.repeat(np.arange(n), k)
    np.add.at(probs, (rows, codes[neighbours.indices].ravel()), neighbours.weights.ravel())
    return pd.DataFrame(probs, columns=classes)


def smooth_over_query(probabilities: pd.DataFrame, query_neighbours: np.ndarray, passes: int = 3) -> pd.DataFrame:
    """Each query cell's label probabilities averaged with those of its nearest query cells (``query_neighbours``:
    per cell, the indices of itself and its k nearest query cells in the latent space), repeated ``passes`` times: a
    soft majority vote over the query's own neighbourhoods, like CellTypist's majority voting but without fixing
    clusters. Scattered one-off calls give way to their neighbourhood's label; a group of cells of a rare type that
    are each other's neighbours keeps its label.
    """
    n, width = query_neighbours.shape
    if width < 2 or n < 2:
        return probabilities
    import scipy.sparse as sp

    rows = np.repeat(np.arange(n), width)
    average = sp.csr_matrix((np.full(rows.size, 1.0 / width), (rows, query_neighbours.ravel())), shape=(n, n))
    values = probabilities.to_numpy()
    for _ in range(passes):
        values = average @ values
    return pd.DataFrame(values, index=probabilities.index, columns=probabilities.columns)


def knn_probabilities(
    reference_latent: np.ndarray, reference_labels: np.ndarray, query_latent: np.ndarray, k: int
) -> pd.DataFrame:
    """Label probabilities from the k nearest reference cells (builds a throw-away index)."""
    return label_probabilities(ReferenceIndex(reference_latent).neighbours(query_latent, k), reference_labels)


def place(neighbours: Neighbours, reference_embedding: np.ndarray) -> np.ndarray:
    """Query cells' 2-D coordinates: the kernel-weighted mean position of their reference neighbours."""
    coords = np.asarray(reference_embedding)[neighbours.indices]  # n × k × 2
    return np.einsum("nk,nkd->nd", neighbours.weights, coords)


def call_labels(probabilities: pd.DataFrame, *, unknown_label: str, threshold: float | None) -> LabelCall:
    """The most probable label per cell; with a threshold, cells more uncertain than it become ``unknown_label``."""
    values = probabilities.to_numpy()
    best = values.argmax(axis=1)
    label = probabilities.columns.to_numpy()[best].astype(object)
    uncertainty = np.clip(1.0 - values[np.arange(len(values)), best], 0.0, 1.0)
    if threshold is not None:
        label = np.where(uncertainty > threshold, unknown_label, label)
    return LabelCall(label=label, uncertainty=uncertainty, probabilities=probabilities)
