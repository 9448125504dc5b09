"""Benchmark: the same query in other forms, and a large one, mapped by the fast path onto the liu_demo bundle.

    .venv/bin/python bench/query_inputs.py                  # symbols vs versioned Ensembl IDs, and 150,000 cells
    .venv/bin/python bench/query_inputs.py --cells 0        # the Ensembl comparison only (~2 min)

Uses the reference model and bundle of bench/fastpath.py (built there on first use; scANVI, B1+B2) and maps B3:

- ``symbols``: the query as it comes (gene symbols);
- ``ensembl``: the same query with its symbols converted to versioned Ensembl IDs (``ENSG…​.7``) through the shipped
  gene table, so the service has to harmonise them back: its accuracy should be within 0.01 of ``symbols``;
- ``large``: B3 replicated to N cells (binomial thinning of the counts, p=0.9, so no two cells are equal), which
  shows time and peak RSS for a query far larger than the 50,000-cell caps of other services.

Each mapping runs in its own child process (same interpreter) so its peak RSS is its own. Writes
bench/results/query_inputs.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "full"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "src"))

from fastpath import FULL, _peak_rss_mb, prepare, thinned_copies, warm_bundle  # noqa: E402 - the bench folder is the script's path


def write_variants(query: Path, cells: int) -> dict[str, Path]:
    import anndata as ad
    import numpy as np

    from scarches_api.genes import to_ensembl

    paths = {"symbols": query}
    ensembl = CACHE / "query_ensembl.h5ad"
    if not ensembl.exists():
        adata = ad.read_h5ad(query)
        genes = (adata.var["feature_types"] == "Gene Expression").to_numpy()
        names = np.asarray(adata.var_names, dtype=object)
        names[genes] = to_ensembl(list(names[genes]), version=7)
        adata.var_names = names
        adata.write_h5ad(ensembl)
    paths["ensembl"] = ensembl
    if cells:
        large = CACHE / f"query_{cells}.h5ad"
        if not large.exists():
            source = ad.read_h5ad(query)
            rng = np.random.default_rng(0)
            picks = np.concatenate([np.arange(source.n_obs), rng.integers(0, source.n_obs, size=cells - source.n_obs)])
            thinned_copies(source, picks, rng).write_h5ad(large)
        paths["large"] = large
    return paths


def run_one(bundle_dir: str, query: str, out: str) -> dict:
    """Map ``query`` onto the bundle with the service's defaults; timings, epochs, gene routes and scores."""
    import anndata as ad

    from scarches_api.config import build_config
    from scarches_api.evaluation import score_labels
    from scarches_api.mapping import run_mapping

    config = build_config({"model": "scANVI", "atlas": "liu_demo"})
    bundle = warm_bundle(bundle_dir, config)
    truth = ad.read_h5ad(query, backed="r").obs["mergedcelltype"].astype(str).to_numpy()
    started = time.perf_counter()
    result = run_mapping(config, bundle=bundle, query=query, output=out)
    seconds = time.perf_counter() - started
    rows = result.table[result.table["type"] == "query"]
    score = score_labels(truth, rows["cell_type"].to_numpy(), set(bundle.obs["mergedcelltype"].astype(str)))
    return {
        "cells": int(len(rows)), "seconds": round(seconds, 1), "timings": result.timings,
        "epochs": result.summary["epochs_trained"].get("query"), "genes": result.summary["genes"],
        "accuracy": round(score.accuracy, 4), "macro_f1": round(score.macro_f1, 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def spawn(bundle_dir: Path, query: Path, name: str) -> dict:
    out_json = CACHE / f"query-inputs-{name}-{os.getpid()}.json"
    subprocess.run([sys.executable, __file__, "--child", str(bundle_dir), str(query), str(CACHE / f"{name}.tsv"),
                    str(out_json)], check=True)
    return json.loads(out_json.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=150_000, help="size of the large query; 0 skips it")
    args = parser.parse_args()
    info = prepare(FULL, [0], "full")
    paths = write_variants(Path(info["query"]), args.cells)
    runs = {name: spawn(Path(info["bundles"][0]), path, name) for name, path in paths.items()}
    for name, run in runs.items():
        print(name, json.dumps(run), flush=True)
    report = {"command": " ".join(["bench/query_inputs.py", *sys.argv[1:]]), "cpu_count": os.cpu_count(), "runs": runs,
              "ensembl_accuracy_gap": round(abs(runs["symbols"]["accuracy"] - runs["ensembl"]["accuracy"]), 4)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_inputs.json").write_text(json.dumps(report, indent=1))
    lines = [f"Command: `{report['command']}` ({report['cpu_count']} CPU cores); fast path, scANVI, B3 onto the "
             "B1+B2 bundle, service defaults.", "",
             "| query | cells | accuracy | macro-F1 | seconds | query epochs | peak RSS MB | genes shared | gene routes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['cells']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['seconds']} | "
                     f"{r['epochs']} | {r['peak_rss_mb']:.0f} | {r['genes']['shared']}/{r['genes']['reference']} | "
                     f"{r['genes']['routes']} |")
    lines += ["", f"Accuracy gap symbols vs Ensembl: {report['ensembl_accuracy_gap']:.4f}."]
    (RESULTS / "query_inputs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        *args, out_json = sys.argv[2:]
        Path(out_json).write_text(json.dumps(run_one(*args)))
    else:
        main()
