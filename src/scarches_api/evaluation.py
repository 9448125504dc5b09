"""Scoring predicted labels against held-back ones: accuracy, macro-F1 and a per-type table, on the seen types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score


@dataclass
class LabelScore:
    accuracy: float
    macro_f1: float
    cells: int
    per_type: pd.DataFrame

    def as_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4), "cells": self.cells}


def score_labels(truth: pd.Series | np.ndarray, predicted: pd.Series | np.ndarray, seen: set[str]) -> LabelScore:
    """Scores over query cells whose true type the reference has; an 'Unknown' call counts as wrong.

    Macro-F1 averages over every label in the truth or the predictions (scikit-learn's default): predicting a type the
    query lacks costs a zero-F1 class, so wrong calls into absent types are not free.
    """
    truth = np.asarray(truth, dtype=str)
    predicted = np.asarray(predicted, dtype=str)
    keep = np.isin(truth, list(seen))
    truth, predicted = truth[keep], predicted[keep]
    types = sorted(set(truth) | set(predicted))
    f1 = f1_score(truth, predicted, labels=types, average=None, zero_division=0)
    per_type = pd.DataFrame(
        {
            "cell_type": types,
            "cells": [int((truth == t).sum()) for t in types],
            "called": [int((predicted == t).sum()) for t in types],
            "correct": [int(((truth == t) & (predicted == t)).sum()) for t in types],
            "f1": np.round(f1, 3),
        }
    )
    per_type["recall"] = (per_type["correct"] / per_type["cells"].clip(lower=1)).round(3)
    top = []
    for t in types:
        calls = pd.Series(predicted[truth == t]).value_counts()
        top.append(calls.index[0] if len(calls) else "")
    per_type["most_called"] = top
    return LabelScore(float((truth == predicted).mean()), float(np.mean(f1)), int(keep.sum()), per_type)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE: the cell-weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(gap / max(len(confidence), 1))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` cells from the rest."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)))
