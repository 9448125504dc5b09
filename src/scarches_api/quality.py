"""How well a query mapped: per-cell mapping distance and the per-job metrics of report.json.

The mapping distance of a query cell is its mean distance to its k nearest reference cells, as a percentile of the
reference cells' own mean distances to their k nearest (other) reference cells: 0.5 is as close as a typical
reference cell; near 1 means the cell sits where the reference has no cells (a type the reference may lack).
"""

from __future__ import annotations

import resource
from typing import Any

import numpy as np
import pandas as pd

from scarches_api.labels import ReferenceIndex

# A query cell whose mapping distance is within the reference's own 95th percentile has a reference anchor.
ANCHOR_PERCENTILE = 0.95


def reference_self_distances(index: ReferenceIndex, latent: np.ndarray, k: int, *, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """Sorted mean distances of (a sample of) reference cells to their k nearest other reference cells."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(latent), size=min(sample, len(latent)), replace=False)
    found = index.neighbours(latent[rows], k + 1)
    return np.sort(found.distances[:, 1:].mean(axis=1))  # the first neighbour is the cell itself


def novelty_threshold(own_sorted: np.ndarray, false_rate: float) -> dict[str, Any]:
    """The mean neighbour distance above which a query cell is called novel, and how it was calibrated.

    The (1 − false_rate) quantile of the reference cells' own mean distances to their k nearest reference cells:
    about ``false_rate`` of the reference's cells lie farther. Measured on liu_demo (bench/novelty.py, Plasmablast and
    NK left out of the reference, B3 mapped): at 0.05 it flags 6.8 % of the query's cells of seen types, 96.5 % of
    the Plasmablasts and 50.6 % of the NK cells. (A null of reference cells against their *other* batches was tried
    first: it flagged 0 %, 3 % and 0 % — far too wide, since a query cell may find its neighbours in any batch.)
    """
    distance = float(np.quantile(own_sorted, 1.0 - false_rate))
    return {"distance": distance, "mapping_distance": round(1.0 - false_rate, 4), "false_rate": false_rate,
            "calibrated_on": "the reference cells' own kNN distances", "null_cells": int(len(own_sorted))}


def mapping_distance(query_mean_distance: np.ndarray, reference_sorted: np.ndarray) -> np.ndarray:
    """Percentile (0..1) of each query cell's mean neighbour distance among the reference cells' own."""
    return np.searchsorted(reference_sorted, query_mean_distance, side="right") / max(len(reference_sorted), 1)


def batch_mixing(query_distances: np.ndarray, reference_distances: np.ndarray, k: int, n_reference: int) -> float:
    """Share of reference cells among each query cell's k nearest cells of reference ∪ query, over the share
    expected if query and reference were mixed evenly (1 = well mixed, 0 = the query sits apart).

    ``query_distances``: each query cell's sorted distances to its nearest *other* query cells (at least k of them
    where the query has them); ``reference_distances``: to its nearest reference cells."""
    own = query_distances[:, :k]
    merged = np.concatenate([reference_distances[:, :k], own], axis=1)
    is_reference = np.concatenate([np.ones_like(reference_distances[:, :k]), np.zeros_like(own)], axis=1)
    order = np.argsort(merged, axis=1, kind="stable")[:, :k]
    share = np.take_along_axis(is_reference, order, axis=1).mean()
    expected = n_reference / (n_reference + len(query_distances))
    return float(min(share / expected, 1.0))


def job_metrics(table: pd.DataFrame, *, unknown_label: str, mixing: float | None, timings: dict[str, float]) -> dict[str, Any]:
    """The per-job figures of report.json, from the result table."""
    query = table[table["type"] == "query"]
    metrics: dict[str, Any] = {
        "cells": {"reference": int((table["type"] == "reference").sum()), "query": int(len(query))},
        "query_with_reference_anchor": round(float((query["mapping_distance"] <= ANCHOR_PERCENTILE).mean()), 4),
        "batch_mixing": None if mixing is None else round(mixing, 4),
        "called_unknown": round(float((query["cell_type"] == unknown_label).mean()), 4),
        "called_novel": round(float((query["novel"] == "yes").mean()), 4) if "novel" in query.columns else None,
        "uncertainty": {q: round(float(query["uncertainty"].quantile(q)), 4) for q in (0.25, 0.5, 0.75, 0.95)},
        "labels": {str(k): int(v) for k, v in query["cell_type"].value_counts().items()},
        "timings_s": timings,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if "query_cell_type" in query.columns:
        own = query["query_cell_type"].astype(str)
        metrics["agreement_with_query_labels"] = round(float((own == query["cell_type"]).mean()), 4)
    return metrics
