"""Pre-flight check: everything that can be said about a mapping's inputs in seconds, without training.

``preflight`` reads nothing but what it is given (AnnData, or paths read by ``io.tenx.read_input``) and never raises
for bad data: every problem becomes an issue with a level (error / warning / info) and a message that names the
problem and the fix. The verdict is the worst level found ('ok' when there are only infos).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarches_api.config import QueryConfig
from scarches_api.errors import InputDataError
from scarches_api.genes import Harmonisation, detect_id_type, harmonise
from scarches_api.io.tenx import read_input

Level = Literal["error", "warning", "info"]
Verdict = Literal["ok", "warning", "error"]

PROTEIN_FEATURE_TYPE = "Antibody Capture"
_SAMPLE_ROWS = 2000  # rows read to judge integrality and value range: enough, and constant time on large inputs
_TOP_VALUES = 10
_LOG_MAX = 20.0  # log1p of any realistic normalised count stays below this; raw UMI maxima are far above
_FEW_QUERY_CELLS = 50
_OVERLAP_WARN_MARGIN = 0.2  # overlap within this of min_gene_overlap still maps, but with visibly less signal

# --- cost model -----------------------------------------------------------------------------------------------
# Placeholders until fitted to bench/ timings (2 CPU cores): seconds per training epoch for 5,000 cells × 2,000
# genes, growing linearly in cells and in genes; per-model factors relative to scVI.
SECONDS_PER_EPOCH_5K_CELLS_2K_GENES = 1.2
MODEL_TIME_FACTOR = {"scVI": 1.0, "scANVI": 1.0, "totalVI": 1.0}
# Neighbour graph + UMAP of the embedded cells: about 20 s per 7,000 cells.
EMBED_SECONDS_PER_7K_CELLS = 20.0
# Imports, model set-up and I/O, paid once per job.
STARTUP_SECONDS = 10.0
# Peak memory: interpreter + torch + scvi-tools, plus three copies of the count matrix (the input, the aligned
# query and the model's registered view), each stored sparse: 8 bytes (float32 value + int32 index) per non-zero.
BASE_MEMORY_MB = 600.0
MATRIX_COPIES = 3
BYTES_PER_NONZERO = 8
DEFAULT_DENSITY = 0.1  # share of non-zero counts in typical droplet data, used when the data's own is unknown


def estimate_cost(
    model: str,
    n_ref: int,
    n_query: int,
    n_genes: int,
    epochs: int,
    *,
    ref_epochs: int = 0,
    embed_cells: int | None = None,
    density: float | None = None,
) -> tuple[float, float]:
    """Expected (seconds, peak MB) of a mapping: query training for ``epochs`` (an upper bound under early
    stopping), reference training for ``ref_epochs`` when no pretrained model is used, and the embedding of
    ``embed_cells`` cells (default: reference + query, the full recompute)."""
    per_epoch_per_cell_gene = SECONDS_PER_EPOCH_5K_CELLS_2K_GENES / (5000 * 2000) * MODEL_TIME_FACTOR.get(model, 1.0)
    train = per_epoch_per_cell_gene * n_genes * (n_query * epochs + n_ref * ref_epochs)
    cells = n_ref + n_query if embed_cells is None else embed_cells
    seconds = STARTUP_SECONDS + train + EMBED_SECONDS_PER_7K_CELLS * cells / 7000
    nonzero = (n_ref + n_query) * n_genes * (DEFAULT_DENSITY if density is None else density)
    peak_mb = BASE_MEMORY_MB + MATRIX_COPIES * nonzero * BYTES_PER_NONZERO / 1e6
    return round(seconds, 1), round(peak_mb, 1)


# --- report ---------------------------------------------------------------------------------------------------
@dataclass
class Issue:
    level: Level
    code: str
    message: str


@dataclass
class PreflightReport:
    """The pre-flight's findings; ``to_dict()`` is the machine-readable report served by /check."""

    verdict: Verdict
    reasons: list[str]
    issues: list[Issue]
    model: str
    query: dict[str, Any]
    reference: dict[str, Any]
    genes: dict[str, Any]
    proteins: dict[str, Any] | None
    cost: dict[str, Any]
    harmonisation: Harmonisation | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("harmonisation")
        return data

    def raise_if_error(self) -> None:
        """Raise InputDataError (HTTP 422) with the reasons as message and the report as details on verdict error."""
        if self.verdict == "error":
            errors = [i.message for i in self.issues if i.level == "error"]
            raise InputDataError("the inputs can't be mapped: " + "; ".join(errors), details=self.to_dict())


class _Issues(list):
    def add(self, level: Level, code: str, message: str) -> None:
        self.append(Issue(level, code, message))


# --- pieces ---------------------------------------------------------------------------------------------------
def _proteins_of(adata: ad.AnnData, key: str) -> tuple[np.ndarray, list[str]]:
    """Mask of protein (antibody-capture) features in var, and the protein names (var features or obsm[key])."""
    mask = np.zeros(adata.n_vars, dtype=bool)
    if "feature_types" in adata.var.columns:
        mask = (adata.var["feature_types"].astype(str) == PROTEIN_FEATURE_TYPE).to_numpy()
    if mask.any():
        return mask, [str(n) for n in adata.var_names[mask]]
    frame = adata.obsm.get(key) if key in adata.obsm else None
    if isinstance(frame, pd.DataFrame):
        return mask, [str(c) for c in frame.columns]
    if frame is not None:
        return mask, [f"protein_{i}" for i in range(np.shape(frame)[1])]
    return mask, []


def _sample(matrix: Any, cols: np.ndarray | None) -> np.ndarray:
    block = matrix[: min(_SAMPLE_ROWS, matrix.shape[0])]
    if cols is not None:
        block = block[:, cols]
    if sp.issparse(block):
        values = np.asarray(block.data)
        # Implicit zeros are values too: without them a sparse count matrix would report a minimum of 1.
        return np.append(values, 0.0) if block.nnz < block.shape[0] * block.shape[1] else values
    return np.asarray(block).ravel()


def _describe(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"integers": True, "min": 0.0, "max": 0.0}
    finite = bool(np.isfinite(values).all())
    integers = finite and bool(values.min() >= 0) and bool(np.all(np.mod(values, 1) == 0))
    return {"integers": integers, "min": round(float(np.nanmin(values)), 4), "max": round(float(np.nanmax(values)), 4)}


def _density(matrix: Any) -> float:
    if sp.issparse(matrix):
        return matrix.nnz / max(matrix.shape[0] * matrix.shape[1], 1)
    values = _sample(matrix, None)
    return float(np.count_nonzero(values)) / max(values.size, 1)


def check_counts(adata: ad.AnnData, genes: np.ndarray, *, role: str, issues: _Issues) -> dict[str, Any]:
    """Where raw counts are (X, a layer, raw), the value range of X, and an issue when there are none."""
    places: dict[str, dict[str, Any]] = {"X": _describe(_sample(adata.X, genes))}
    for name in sorted(adata.layers.keys(), key=lambda n: n != "counts"):  # 'counts' first, as use_counts does
        places[f"layers['{name}']"] = _describe(_sample(adata.layers[name], genes))
    raw_matches = adata.raw is not None and adata.raw.n_vars == adata.n_vars
    if adata.raw is not None:
        places["raw.X"] = _describe(_sample(adata.raw.X, genes if raw_matches else None))
        places["raw.X"]["genes"] = int(adata.raw.n_vars)
    usable = [p for p, d in places.items() if d["integers"] and (p != "raw.X" or raw_matches)]
    counts_from = usable[0] if usable else None
    x = places["X"]
    result = {"counts_from": counts_from, "integers_in": [p for p, d in places.items() if d["integers"]],
              "x_range": [x["min"], x["max"]], "places": places, "density": round(_density(adata.X), 4)}
    if counts_from is None:
        if x["min"] < 0:
            looks = f"scaled values (range {x['min']:.3g}..{x['max']:.3g}, with negatives)"
        elif x["max"] <= _LOG_MAX:
            looks = f"log-normalised values (range {x['min']:.3g}..{x['max']:.3g}, not integers)"
        else:
            looks = f"normalised values (range {x['min']:.3g}..{x['max']:.3g}, not integers)"
        elsewhere = "" if raw_matches or adata.raw is None else (
            f" raw holds integers but has {adata.raw.n_vars} genes to X's {adata.n_vars}: subset raw to X's genes"
            " or store the counts as a layer."
        )
        issues.add(
            "error",
            f"{role}_not_counts",
            f"{role} X holds {looks}: provide the raw integer UMI counts in X, layers['counts'] or raw "
            f"(scVI-family models need counts; normalised input trains a wrong model).{elsewhere}",
        )
    elif counts_from != "X":
        issues.add("info", f"{role}_counts_elsewhere",
                   f"{role} counts are taken from {counts_from} (X is not integer counts)")
    return result


def check_key(obs: pd.DataFrame, key: str, *, role: str, config_key: str, issues: _Issues, required: bool) -> dict[str, Any]:
    """Whether an obs column exists, with its number of values and the most frequent ones."""
    if key not in obs.columns:
        if required:
            cols = ", ".join(map(str, obs.columns[:20])) or "(none)"
            issues.add(
                "error",
                f"{role}_missing_{config_key}",
                f"obs column '{key}' missing from the {role} (config key {config_key}): set {config_key} to the "
                f"column that holds it; columns present: {cols}",
            )
        return {"key": key, "present": False}
    counts = obs[key].astype(str).value_counts()
    return {"key": key, "present": True, "n_values": int(counts.size),
            "top_values": {str(k): int(v) for k, v in counts.head(_TOP_VALUES).items()}}


def _as_anndata(data: ad.AnnData | str | Path | None, role: str) -> ad.AnnData | None:
    if data is None or isinstance(data, ad.AnnData):
        return data
    return read_input(data, role)


# --- the check ------------------------------------------------------------------------------------------------
def preflight(
    config: QueryConfig,
    *,
    query: ad.AnnData | str | Path,
    reference: ad.AnnData | str | Path | None = None,
    reference_genes: Sequence[str] | None = None,
    reference_obs: pd.DataFrame | None = None,
    protein_names: list[str] | None = None,
) -> PreflightReport:
    """Check a query (and reference data, or a bundle's genes + obs + protein panel) against a config.

    Gives cells, genes, gene-ID types, gene overlap before and after harmonisation, where the counts are, the obs
    keys with their values, the protein panel overlap (totalVI), the expected cost and a verdict with reasons.
    Raises only InputDataError for files that can't be read; bad data become issues in the report.
    """
    query_ad = _as_anndata(query, "query")
    reference_ad = _as_anndata(reference, "reference")
    if reference_ad is None and reference_genes is None:
        raise ValueError("give the reference data or the reference genes (of a bundle)")
    issues = _Issues()
    c = config

    q_proteins_mask, q_proteins = _proteins_of(query_ad, c.protein_key)
    q_genes = np.asarray(query_ad.var_names[~q_proteins_mask].astype(str))
    q_info: dict[str, Any] = {"cells": int(query_ad.n_obs), "genes": int(q_genes.size), "proteins": len(q_proteins),
                              "format": query_ad.uns.get("input_format", "AnnData")}
    if "read_in_chunks" in query_ad.uns:  # a large query read keeping only the genes the reference has
        q_info["read_in_chunks"] = dict(query_ad.uns["read_in_chunks"])
    q_info["counts"] = check_counts(query_ad, ~q_proteins_mask, role="query", issues=issues)
    q_info["condition_key"] = check_key(query_ad.obs, c.condition_key, role="query", config_key="condition_key",
                                        issues=issues, required=True)
    q_info["cell_type_key"] = check_key(query_ad.obs, c.cell_type_key, role="query", config_key="cell_type_key",
                                        issues=issues, required=False)
    if query_ad.n_obs < _FEW_QUERY_CELLS:
        issues.add("warning", "few_query_cells",
                   f"the query has only {query_ad.n_obs} cells: fine-tuning on fewer than {_FEW_QUERY_CELLS} cells is "
                   "unstable; add cells or expect uncertain labels")

    if reference_ad is not None:
        r_mask, r_proteins = _proteins_of(reference_ad, c.protein_key)
        r_genes = np.asarray(reference_ad.var_names[~r_mask].astype(str))
        r_obs = reference_ad.obs
        r_info: dict[str, Any] = {"cells": int(reference_ad.n_obs), "genes": int(r_genes.size),
                                  "proteins": len(r_proteins), "source": "data"}
        r_info["counts"] = check_counts(reference_ad, ~r_mask, role="reference", issues=issues)
    else:
        r_genes = np.asarray([str(g) for g in reference_genes or []])
        r_obs = reference_obs if reference_obs is not None else pd.DataFrame()
        r_proteins = list(protein_names or [])
        r_info = {"cells": int(len(r_obs)), "genes": int(r_genes.size), "proteins": len(r_proteins), "source": "bundle"}
    if reference_ad is not None or reference_obs is not None:
        r_info["condition_key"] = check_key(r_obs, c.condition_key, role="reference", config_key="condition_key",
                                            issues=issues, required=True)
        r_info["cell_type_key"] = check_key(r_obs, c.cell_type_key, role="reference", config_key="cell_type_key",
                                            issues=issues, required=True)
    if q_info["condition_key"]["present"] and r_info.get("condition_key", {}).get("present"):
        shared = set(query_ad.obs[c.condition_key].astype(str)) & set(r_obs[c.condition_key].astype(str))
        if shared:
            issues.add("info", "shared_batch_names",
                       f"query batches {sorted(shared)[:5]} also name reference batches; they are renamed 'query:<name>'")

    genes, harmonisation = _check_genes(q_genes, r_genes, c, issues)
    proteins = _check_proteins(q_proteins, r_proteins, c, reference_ad is None, issues) if c.model == "totalVI" else None

    pretrained = reference_ad is None or c.ref_path is not None
    ref_epochs = 0 if pretrained else {"scVI": c.scvi_max_epochs, "scANVI": c.scvi_max_epochs + c.scanvi_max_epochs,
                                       "totalVI": c.totalvi_max_epochs_1}[c.model]
    full_embed = reference_ad is not None
    n_genes = max(int(r_genes.size), 1)
    # A bundle's reference cells are neither trained on nor held as counts: only the query costs.
    n_ref = r_info["cells"] if reference_ad is not None else 0
    seconds, peak_mb = estimate_cost(c.model, n_ref, q_info["cells"], n_genes, c.query_epochs,
                                     ref_epochs=ref_epochs, embed_cells=None if full_embed else q_info["cells"],
                                     density=q_info["counts"]["density"] or None)
    cost = {"seconds": seconds, "peak_memory_mb": peak_mb, "query_epochs": c.query_epochs, "reference_epochs": ref_epochs,
            "embedding": "UMAP of all cells" if full_embed else "query placed into the bundle's embedding",
            "note": "upper bound for training (early stopping may end it sooner); CPU estimate"}

    levels = {i.level for i in issues}
    worst: Verdict = "error" if "error" in levels else "warning" if "warning" in levels else "ok"
    reasons = [i.message for level in ("error", "warning") for i in issues if i.level == level]
    return PreflightReport(verdict=worst, reasons=reasons, issues=list(issues), model=c.model, query=q_info,
                           reference=r_info, genes=genes, proteins=proteins, cost=cost, harmonisation=harmonisation)


def _check_genes(
    q_genes: np.ndarray, r_genes: np.ndarray, c: QueryConfig, issues: _Issues
) -> tuple[dict[str, Any], Harmonisation]:
    q_type, r_type = detect_id_type(list(q_genes)), detect_id_type(list(r_genes))
    n_ref = max(int(r_genes.size), 1)
    before = len(set(q_genes) & set(r_genes)) / n_ref
    h = harmonise(list(q_genes), list(r_genes))
    after = h.share_of_reference
    genes = {"query_id_type": q_type.to_dict(), "reference_id_type": r_type.to_dict(),
             "overlap_before": round(before, 4), "overlap_after": round(after, 4), "min_gene_overlap": c.min_gene_overlap,
             **h.to_dict()}
    if len(set(q_genes)) < q_genes.size:
        issues.add("warning", "duplicate_query_genes",
                   f"{q_genes.size - len(set(q_genes))} query gene names occur more than once; only the first of each is "
                   "used: sum or drop duplicates if they hold different counts")
    if q_type.species and r_type.species and q_type.species != r_type.species:
        issues.add("warning", "species_mismatch",
                   f"the query's genes look {q_type.species} and the reference's {r_type.species}: genes match only by "
                   f"letters, not as orthologs; map onto a {q_type.species} reference if there is one")
    if after < c.min_gene_overlap:
        hint = ("convert the query's gene names to the reference's naming" if q_type.kind != r_type.kind
                else "check that both use the same species and annotation, or lower min_gene_overlap")
        issues.add("error", "low_gene_overlap",
                   f"gene overlap {after:.0%} < min_gene_overlap {c.min_gene_overlap:.0%} ({h.matched} of "
                   f"{r_genes.size} reference genes found in the query, {q_type.kind} vs {r_type.kind}): {hint}")
    elif after < min(1.0, c.min_gene_overlap + _OVERLAP_WARN_MARGIN):
        issues.add("warning", "marginal_gene_overlap",
                   f"gene overlap {after:.0%} is close to min_gene_overlap {c.min_gene_overlap:.0%}: the "
                   f"{h.unmatched_reference} missing reference genes are set to zero, which weakens the mapping; "
                   "provide the full, unfiltered gene set if you have it")
    if after > before:
        routes = ", ".join(f"{k} {v}" for k, v in h.routes.items() if v and k != "identical")
        issues.add("info", "genes_harmonised",
                   f"{h.matched - h.routes['identical']} genes matched only after harmonisation ({routes}); overlap "
                   f"{before:.0%} -> {after:.0%}")
    return genes, h


def _check_proteins(q: list[str], r: list[str], c: QueryConfig, bundle: bool, issues: _Issues) -> dict[str, Any]:
    shared = sorted(set(q) & set(r))
    info = {"query": len(q), "reference": len(r), "shared": len(shared),
            "share_of_reference": round(len(shared) / len(r), 4) if r else None,
            "missing_in_query": sorted(set(r) - set(q))[:20]}
    if not r:
        if not bundle:  # reference data are set up for totalVI even with a pretrained model, so they need proteins
            issues.add("error", "reference_without_proteins",
                       f"totalVI needs the reference's protein counts: none in obsm['{c.protein_key}'] (config key "
                       "protein_key) nor as var features with feature_types 'Antibody Capture'; add them or use scVI/scANVI")
        else:
            issues.add("info", "protein_panel_unknown", "the reference's protein panel comes from the pretrained model; "
                       "its overlap with the query is checked when the model is loaded")
    elif not q:
        issues.add("warning", "query_without_proteins",
                   "the query has no protein counts: totalVI maps it on RNA alone and imputes all proteins; add "
                   f"obsm['{c.protein_key}'] or 'Antibody Capture' features to use measured proteins")
    elif len(shared) < len(r):
        issues.add("warning", "partial_protein_panel",
                   f"the query measures {len(shared)} of the reference's {len(r)} proteins; the other "
                   f"{len(r) - len(shared)} are treated as missing and imputed: check that protein names match the "
                   "reference's (e.g. CD3 vs CD3_TotalSeqB)")
    return info
