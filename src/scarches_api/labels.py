"""Label transfer from reference to query cells: a distance-weighted kNN on the latent space, or a classifier."""

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


def knn_probabilities(
    reference_latent: np.ndarray, reference_labels: np.ndarray, query_latent: np.ndarray, k: int
) -> pd.DataFrame:
    """Label probabilities from the k nearest reference cells, weighted by a Gaussian kernel on their distance.

    The kernel width adapts to each query cell's neighbour distances (scArches' ``weighted_knn_transfer``), so a cell
    whose neighbours disagree, or whose nearest ones disagree with the rest, gets a flat distribution.
    """
    k = min(k, len(reference_labels))
    index = NearestNeighbors(n_neighbors=k).fit(reference_latent)
    distances, neighbours = index.kneighbors(query_latent)
    spread = distances.std(axis=1, keepdims=True)
    width = (2.0 / np.maximum(spread, 1e-12)) ** 2
    weights = np.exp(-distances / width)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    classes, codes = np.unique(reference_labels, return_inverse=True)
    probs = np.zeros((len(query_latent), len(classes)))
    rows = np.repeat(np.arange(len(query_latent)), k)
    np.add.at(probs, (rows, codes[neighbours].ravel()), weights.ravel())
    return pd.DataFrame(probs, columns=classes)


def call_labels(probabilities: pd.DataFrame, *, unknown_label: str, threshold: float | None) -> LabelCall:
    """The most probable label per cell; with a threshold, cells more uncertain than it become ``unknown_label``."""
    values = probabilities.to_numpy()
    best = values.argmax(axis=1)
    label = probabilities.columns.to_numpy()[best].astype(object)
    uncertainty = np.clip(1.0 - values[np.arange(len(values)), best], 0.0, 1.0)
    if threshold is not None:
        label = np.where(uncertainty > threshold, unknown_label, label)
    return LabelCall(label=label, uncertainty=uncertainty, probabilities=probabilities)
