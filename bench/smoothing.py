"""Benchmark: does smoothing labels over the query's own neighbourhoods help on queries it was not tuned on?

    .venv/bin/python bench/smoothing.py                # B1 and B2 as queries (~10 min on 2 cores)
    .venv/bin/python bench/smoothing.py --queries B3   # the split the default was chosen on (the demo's)

``smooth_neighbors`` (15, three passes) was chosen by measuring on B3 mapped onto B1+B2. Here each other batch of
liu_demo is the query and the remaining two the reference, with the demo's settings (scANVI, reference scVI 50 +
scANVI 20 epochs, query up to 50 with early stopping); one mapping per split gives every label method's
probabilities, so the smoothed and unsmoothed labels come from the same model. Scores are accuracy and macro-F1 on
the query cells whose type the reference has. Writes bench/results/smoothing.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", default="B1,B2", help="comma-separated batches to map, each onto the others")
    args = parser.parse_args()

    import anndata as ad

    from scarches_api.config import build_config
    from scarches_api.datasets import CELL_TYPE_KEY, CONDITION_KEY, fetch_liu_demo
    from scarches_api.demo import DEMO_CONFIG
    from scarches_api.evaluation import score_labels
    from scarches_api.mapping import run_mapping

    work = HERE / ".cache" / "smoothing"
    work.mkdir(parents=True, exist_ok=True)
    data = ad.read_h5ad(fetch_liu_demo(REPO / "data"))
    batches = data.obs[CONDITION_KEY].astype(str).to_numpy()
    splits = {}
    for name in args.queries.split(","):
        data[batches != name].copy().write_h5ad(work / f"reference-{name}.h5ad")
        data[batches == name].copy().write_h5ad(work / f"query-{name}.h5ad")
        config = build_config({**DEMO_CONFIG, "cell_type_keys": []})
        result = run_mapping(config, reference=work / f"reference-{name}.h5ad", query=work / f"query-{name}.h5ad",
                             output=work / f"result-{name}.tsv")
        rows = result.table[result.table["type"] == "query"].set_index("cell_id")
        truth = rows["query_cell_type"]
        seen = set(data.obs.loc[batches != name, CELL_TYPE_KEY].astype(str))
        splits[name] = {"query_cells": int(len(rows)), "epochs": result.summary["epochs_trained"], "methods": {
            method: score_labels(truth, probs.idxmax(axis=1).reindex(truth.index), seen).as_dict()
            for method, probs in result.label_candidates.items()
        }}
        print(name, json.dumps(splits[name]), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    report = {"command": " ".join(["bench/smoothing.py", *sys.argv[1:]]), "cpu_count": os.cpu_count(), "splits": splits}
    (out / "smoothing.json").write_text(json.dumps(report, indent=1))
    methods = list(next(iter(splits.values()))["methods"])
    lines = [f"Command: `{report['command']}` ({report['cpu_count']} CPU cores); scANVI, the demo's epochs. Accuracy / "
             "macro-F1 on query cells of types the reference has.", "",
             "| query (reference: the other batches) | cells | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, split in splits.items():
        cells = " | ".join(f"{split['methods'][m]['accuracy']:.3f} / {split['methods'][m]['macro_f1']:.3f}" for m in methods)
        lines.append(f"| {name} | {split['query_cells']} | {cells} |")
    (out / "smoothing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
