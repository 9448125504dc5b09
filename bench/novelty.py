"""Benchmark: can the mapping tell cell types the reference lacks? Leave-out test on liu_demo.

    .venv/bin/python bench/novelty.py            # full size (~10 min on 2 cores)
    .venv/bin/python bench/novelty.py --quick    # subsampled, few epochs

The reference is B1+B2 without Plasmablast and without NK cells; B3 is mapped onto it. For each left-out type, the
AUROC of several per-cell novelty scores for telling its cells from query cells of the types the reference has:

- ``uncertainty``: 1 − the called label's probability (the service's label method);
- ``knn_uncertainty``: the same from the kNN alone;
- ``mapping_distance``: the cell's mean distance to its k nearest reference cells, as a percentile of the reference
  cells' own (the table's ``mapping_distance`` column);
- ``combined``: the mean of the two percentile ranks (distance and uncertainty).

Also the share of left-out cells called Unknown and of seen cells wrongly called Unknown at the service's
threshold, if one is set. Writes bench/results/novelty.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

LEFT_OUT = ("Plasmablast", "NK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="scANVI")
    args = parser.parse_args()

    import anndata as ad
    from scipy.stats import rankdata

    from scarches_api.config import build_config
    from scarches_api.datasets import CELL_TYPE_KEY, fetch_liu_demo, split_liu
    from scarches_api.evaluation import auroc
    from scarches_api.mapping import run_mapping

    work = HERE / ".cache" / ("novelty-quick" if args.quick else "novelty")
    work.mkdir(parents=True, exist_ok=True)
    reference, query = split_liu(ad.read_h5ad(fetch_liu_demo(REPO / "data")), cells_per_batch=1500 if args.quick else None)
    reference = reference[~reference.obs[CELL_TYPE_KEY].isin(LEFT_OUT).to_numpy()].copy()
    reference.write_h5ad(work / "reference.h5ad")
    query.write_h5ad(work / "query.h5ad")
    epochs = (dict(scvi_max_epochs=10, scanvi_max_epochs=5, scanvi_max_epochs_query=10, scvi_max_epochs_query=10)
              if args.quick else dict(scvi_max_epochs=50, scanvi_max_epochs=20, scanvi_max_epochs_query=50,
                                      scvi_max_epochs_query=50))
    config = build_config({"model": args.model, "atlas": "liu_demo", **epochs})
    started = time.perf_counter()
    result = run_mapping(config, reference=work / "reference.h5ad", query=work / "query.h5ad", output=work / "result.tsv")
    table = result.table
    rows = table[table["type"] == "query"]
    truth = rows["query_cell_type"].astype(str).to_numpy()
    seen = set(reference.obs[CELL_TYPE_KEY].astype(str))
    knn = result.label_candidates["knn"].to_numpy()
    scores = {
        "uncertainty": rows["uncertainty"].to_numpy(),
        "knn_uncertainty": 1 - knn.max(axis=1),
        "mapping_distance": rows["mapping_distance"].to_numpy(),
    }
    scores["combined"] = (rankdata(scores["uncertainty"]) + rankdata(scores["mapping_distance"])) / (2 * len(rows))
    figures: dict = {"model": args.model, "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
                     "query_cells": int(len(rows)), "left_out": {}}
    is_seen = np.isin(truth, list(seen))
    for cell_type in LEFT_OUT:
        pick = is_seen | (truth == cell_type)
        positive = truth[pick] == cell_type
        figures["left_out"][cell_type] = {
            "cells": int(positive.sum()),
            **{name: round(auroc(values[pick], positive), 4) for name, values in scores.items()},
        }
    # The 'novel' column at the configured false rate: the threshold is calibrated on the reference's own batches;
    # here is what it does on a real new batch.
    novel = rows["novel"].to_numpy() == "yes"
    figures["novel_column"] = {
        "calibration": result.summary["novelty"],
        "seen_types_flagged": round(float(novel[is_seen].mean()), 4),
        **{f"{t}_flagged": round(float(novel[truth == t].mean()), 4) for t in LEFT_OUT},
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out / f"novelty{suffix}.json").write_text(json.dumps(figures, indent=1))
    lines = [f"Command: `{' '.join(sys.argv)}`; {args.model}, epochs {epochs}.", "",
             "| left-out type | cells | " + " | ".join(scores) + " |", "|---|---|" + "---|" * len(scores)]
    for cell_type, row in figures["left_out"].items():
        lines.append(f"| {cell_type} | {row['cells']} | " + " | ".join(f"{row[n]:.3f}" for n in scores) + " |")
    nc = figures["novel_column"]
    cal = nc["calibration"]
    lines += ["", f"`novel` column at novelty_false_rate {cal['false_rate']} (threshold calibrated on "
              f"{cal['calibrated_on']}, {cal['null_cells']} cells: mean kNN distance {cal['distance']:.3f}, i.e. "
              f"mapping_distance {cal['mapping_distance']:.3f}): flagged {nc['seen_types_flagged']:.1%} of the query's "
              "seen-type cells, " + ", ".join(f"{nc[t + '_flagged']:.1%} of {t}" for t in LEFT_OUT) + "."]
    (out / f"novelty{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
