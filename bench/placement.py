"""Benchmark: placing query cells into a stored reference embedding — UMAP ``transform`` against kNN placement.

    .venv/bin/python bench/placement.py        # ~3 min on 2 cores

The fast path never recomputes the reference's 2-D embedding; each query cell gets a position inside it. Two ways:

- ``umap_transform``: a UMAP model (umap-learn) fitted on the reference latent, then ``transform`` of the query
  latent. The bundle would have to keep the fitted UMAP object, which only pickles (code objects from storage).
- ``knn_placement`` (the service's): the kernel-weighted mean position of the query cell's k nearest reference cells
  in the latent space — the same neighbours and weights that vote on its label.

Both place B3 (12.5k cells, mapped by the service's steps onto the liu_demo B1+B2 scANVI bundle of bench/fastpath.py)
into the same reference UMAP (fitted here with umap-learn), and are scored by: time; **2-D label agreement** — the
share of query cells of seen types whose nearest reference cell *in 2-D* has the query cell's true label; and
**neighbour preservation** — the share of a query cell's 15 nearest reference cells in the latent space that are
among its 15 nearest in 2-D. Writes bench/results/placement.json and .md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from fastpath import FULL, prepare, warm_bundle  # noqa: E402 - the bench folder is the script's path

K = 15


def query_latent(bundle, query_path: str):
    """The query's latent space after surgery and training, through the service's own steps."""
    import scvi

    from scarches_api.config import build_config
    from scarches_api.io.tenx import read_input
    from scarches_api.mapping import MappingState, align_genes, check_inputs, load_reference, predict, surgery, train
    from scarches_api.models import MODELS

    config = build_config({"model": "scANVI", "atlas": "liu_demo"})
    scvi.settings.seed = config.seed
    state = MappingState(config=config, family=MODELS["scANVI"](config), query=read_input(query_path, role="query"),
                         bundle=bundle)
    check_inputs(state)
    load_reference(state, None)
    for step in (align_genes, surgery, train, predict):
        step(state)
    return state


def scores(positions: np.ndarray, ref_xy: np.ndarray, ref_labels: np.ndarray, latent_nb: np.ndarray,
           truth: np.ndarray, seen: np.ndarray) -> dict:
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=K).fit(ref_xy).kneighbors(positions, return_distance=False)
    agree = ref_labels[nearest[:, 0]] == truth
    kept = np.mean([len(set(a) & set(b)) / K for a, b in zip(nearest, latent_nb)])
    return {"label_agreement_2d": round(float(agree[seen].mean()), 4), "neighbour_preservation": round(float(kept), 4)}


def main() -> None:
    import anndata as ad
    import umap

    from scarches_api.config import build_config
    from scarches_api.labels import place

    info = prepare(FULL, [0], "full")
    config = build_config({"model": "scANVI", "atlas": "liu_demo"})
    bundle = warm_bundle(info["bundles"][0], config)
    state = query_latent(bundle, info["query"])
    ref_latent, labelled = bundle.latent[bundle.labelled], bundle.labelled
    ref_labels = bundle.obs[config.cell_type_key].astype(str).to_numpy()[labelled]
    truth = ad.read_h5ad(info["query"], backed="r").obs[config.cell_type_key].astype(str).to_numpy()
    seen = np.isin(truth, np.unique(ref_labels))
    latent_nb = state.neighbours.indices[:, :K]

    started = time.perf_counter()
    reducer = umap.UMAP(n_neighbors=config.n_neighbors, random_state=config.seed).fit(ref_latent)
    fit_s = time.perf_counter() - started
    ref_xy = reducer.embedding_
    rows = {}
    started = time.perf_counter()
    transformed = reducer.transform(state.query_latent)
    rows["umap_transform"] = {"seconds": round(time.perf_counter() - started, 2),
                              **scores(transformed, ref_xy, ref_labels, latent_nb, truth, seen)}
    started = time.perf_counter()
    placed = place(state.neighbours, ref_xy)
    rows["knn_placement"] = {"seconds": round(time.perf_counter() - started, 3),
                             **scores(placed, ref_xy, ref_labels, latent_nb, truth, seen)}
    report = {"command": " ".join(["bench/placement.py", *sys.argv[1:]]), "cpu_count": os.cpu_count(),
              "reference_cells": int(len(ref_latent)), "query_cells": int(len(truth)),
              "umap_fit_on_reference_s": round(fit_s, 1), "rows": rows}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "placement.json").write_text(json.dumps(report, indent=1))
    lines = [f"Command: `{report['command']}` ({report['cpu_count']} CPU cores). B3 ({report['query_cells']} cells) "
             f"placed into a UMAP of the {report['reference_cells']} labelled B1+B2 cells (fitted in "
             f"{report['umap_fit_on_reference_s']} s, once per bundle).", "",
             "| method | seconds | 2-D label agreement | neighbour preservation |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds']} | {r['label_agreement_2d']:.3f} | {r['neighbour_preservation']:.3f} |")
    (out / "placement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
