"""The main job on real data: map liu_demo's batch B3 onto B1+B2 and score the predicted labels.

The query's own labels are kept aside (``query_cell_type`` in the table) and only used for scoring.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anndata as ad

from scarches_api.config import build_config
from scarches_api.datasets import CELL_TYPE_KEY, coarse_label, fetch_liu_demo, split_liu
from scarches_api.evaluation import LabelScore, expected_calibration_error, score_labels
from scarches_api.mapping import MappingResult, ProgressCallback, run_mapping

log = logging.getLogger(__name__)

# The original algorithm's epochs on this split (scVI 50 / scANVI 20 / query 50): ~5 minutes of training on 2 cores.
DEMO_CONFIG: dict[str, Any] = {
    "model": "scANVI",
    "atlas": "liu_demo",
    "scvi_max_epochs": 50,
    "scanvi_max_epochs": 20,
    "scanvi_max_epochs_query": 50,
    "cell_type_keys": ["coarse_cell_type", CELL_TYPE_KEY],
}
COARSE_KEY = "coarse_cell_type"


def prepare_demo_files(data_dir: Path) -> tuple[Path, Path]:
    """reference.h5ad (B1+B2) and query.h5ad (B3) under ``data_dir``, written once."""
    ref_path, query_path = data_dir / "liu_reference.h5ad", data_dir / "liu_query.h5ad"
    if not (ref_path.exists() and query_path.exists()):
        reference, query = split_liu(ad.read_h5ad(fetch_liu_demo(data_dir)))
        for adata in (reference, query):
            # A coarse level derived from the fine labels (B, CD4 T, CD8 T, other T, NK, monocyte, DC, ...).
            adata.obs[COARSE_KEY] = adata.obs[CELL_TYPE_KEY].astype(str).map(coarse_label)
        reference.write_h5ad(ref_path)
        query.write_h5ad(query_path)
    return ref_path, query_path


def run_demo(
    data_dir: Path, out_dir: Path, overrides: dict[str, Any] | None = None, progress: ProgressCallback | None = None
) -> tuple[MappingResult, LabelScore, dict[str, dict]]:
    ref_path, query_path = prepare_demo_files(data_dir)
    config = build_config({**DEMO_CONFIG, **(overrides or {})})
    result = run_mapping(
        config,
        reference=ref_path,
        query=query_path,
        output=out_dir / "liu_B3_on_B1B2.tsv",
        model_out=out_dir / "liu_B3_model",
        progress=progress,
    )
    table = result.table
    query_rows = table[table["type"] == "query"]
    seen = set(table.loc[table["type"] == "reference", "cell_type"])
    score = score_labels(query_rows["query_cell_type"], query_rows["cell_type"], seen)
    truth = query_rows.set_index("cell_id")["query_cell_type"]
    by_method = {
        method: score_labels(truth, probs.idxmax(axis=1).reindex(truth.index), seen).as_dict()
        for method, probs in result.label_candidates.items()
    }
    coarse = query_rows[f"cell_type:{COARSE_KEY}"] if f"cell_type:{COARSE_KEY}" in query_rows else None
    levels = {"fine": {**score.as_dict(), "ece": calibration(query_rows, "cell_type", "uncertainty", "query_cell_type", seen)}}
    if coarse is not None:
        seen_coarse = set(table.loc[table["type"] == "reference", f"cell_type:{COARSE_KEY}"])
        levels["coarse"] = {
            **score_labels(query_rows[f"query_cell_type:{COARSE_KEY}"], coarse, seen_coarse).as_dict(),
            "ece": calibration(query_rows, f"cell_type:{COARSE_KEY}", f"uncertainty:{COARSE_KEY}",
                               f"query_cell_type:{COARSE_KEY}", seen_coarse),
        }
    report = {
        "config": config.used(),
        "score": score.as_dict(),
        "levels": levels,
        "score_by_label_method": by_method,
        "timings": result.timings,
        "summary": result.summary,
    }
    (out_dir / "liu_B3_report.json").write_text(json.dumps(report, indent=2, default=str))
    score.per_type.to_csv(out_dir / "liu_B3_per_type.tsv", sep="\t", index=False)
    return result, score, {"label_methods": by_method, "levels": levels}


def calibration(rows, label: str, uncertainty: str, truth: str, seen: set[str]) -> float:
    """ECE of 1 − uncertainty on query cells of seen types, at one label level."""
    keep = rows[truth].astype(str).isin(seen).to_numpy()
    rows = rows[keep]
    return round(expected_calibration_error(1 - rows[uncertainty].to_numpy(), (rows[label] == rows[truth]).to_numpy()), 4)


__all__ = ["CELL_TYPE_KEY", "DEMO_CONFIG", "run_demo", "prepare_demo_files"]
