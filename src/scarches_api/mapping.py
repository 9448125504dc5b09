"""The mapping as named steps, each testable alone; the CLI, the sync API and the async jobs all call ``run_mapping``.

check inputs → load reference → align genes → surgery → train → predict → embed → write
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import anndata as ad
import numpy as np
import pandas as pd

from scarches_api.config import QueryConfig
from scarches_api.errors import InputDataError, ModelLoadError
from scarches_api.io.h5ad import require_obs_key, use_counts
from scarches_api.io.tenx import read_input
from scarches_api.io.table import write_atomic, write_folder_atomic, write_table
from scarches_api.bundle import ReferenceBundle
from scarches_api.labels import (
    LabelCall,
    Neighbours,
    ReferenceIndex,
    call_labels,
    label_probabilities,
    place,
    smooth_over_query,
)
from scarches_api.models import MODELS, SurgeryModel
from scarches_api.quality import (
    batch_mixing,
    job_metrics,
    mapping_distance,
    novelty_threshold,
    reference_self_distances,
)
from scarches_api.models.saved import normalise_model_path

log = logging.getLogger(__name__)

STAGES = ("check", "reference", "align", "surgery", "train", "predict", "embed", "write")

# progress(stage, info): called with each stage name and {} as it starts, and with ("epoch", {"epoch": i, "epochs": n})
# after every training epoch (reference and query training both report).
ProgressCallback = Callable[[str, dict[str, Any]], None]

_PROTEIN_FEATURE_TYPE = "Antibody Capture"


@dataclass
class MappingResult:
    """What a mapping produced: the per-cell table, where things were written, and how it went."""

    table: pd.DataFrame
    output: Path
    model_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    label_candidates: dict[str, pd.DataFrame] = field(default_factory=dict)
    # report.json, report.html and manifest.json, written next to the table.
    reports: dict[str, Path] = field(default_factory=dict)


@dataclass
class MappingState:
    """What the steps hand each other. With a bundle, the reference's cells come precomputed and ``reference`` is None."""

    config: QueryConfig
    family: SurgeryModel
    query: ad.AnnData
    reference: ad.AnnData | None = None
    bundle: ReferenceBundle | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    reference_model: Any = None
    query_model: Any = None
    reference_latent: np.ndarray | None = None
    query_latent: np.ndarray | None = None
    neighbours: Neighbours | None = None
    labelled: np.ndarray | None = None  # reference cells that carry a label (the kNN votes only among them)
    labels: LabelCall | None = None
    levels: dict[str, LabelCall] = field(default_factory=dict)  # further label levels (config cell_type_keys)
    # Every label method's probabilities (knn; classifier and blend for scANVI), for scoring and reports.
    label_candidates: dict[str, pd.DataFrame] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    imputed: pd.DataFrame | None = None
    mapping_distance: np.ndarray | None = None
    novel: np.ndarray | None = None  # query cells farther from the reference than the calibrated threshold
    mixing: float | None = None

    @property
    def reference_obs(self) -> pd.DataFrame:
        """The reference cells' obs (id as index), from the data or the bundle."""
        return self.bundle.obs if self.bundle is not None else self.reference.obs


# --- check inputs -----------------------------------------------------------------------------------------------
def genes_of(reference_genes: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """var → mask of the query features worth reading: genes the reference has (directly or once harmonised) and
    proteins. A large query is read keeping only these (``read_input``)."""
    from scarches_api.genes import harmonise

    wanted = {str(g) for g in reference_genes}

    def keep(var: pd.DataFrame) -> np.ndarray:
        proteins = _is_protein(var)
        names = [str(n) for n in var.index[~proteins]]
        mapping = harmonise(names, sorted(wanted)).mapping
        mask = proteins.copy()
        mask[~proteins] = [n in wanted or mapping.get(n) in wanted for n in names]
        return mask

    return keep


def _is_protein(var: pd.DataFrame) -> np.ndarray:
    if "feature_types" not in var.columns:
        return np.zeros(len(var), dtype=bool)
    return (var["feature_types"].astype(str) == _PROTEIN_FEATURE_TYPE).to_numpy()


def split_proteins(adata: ad.AnnData, key: str) -> tuple[ad.AnnData, int]:
    """Move 'Antibody Capture' features from var into ``obsm[key]`` (a cells × proteins frame).

    Returns the gene-only AnnData and the number of proteins moved.
    """
    is_protein = _is_protein(adata.var)
    if not is_protein.any():
        return adata, 0
    proteins = adata[:, is_protein]
    matrix = proteins.X.toarray() if hasattr(proteins.X, "toarray") else np.asarray(proteins.X)
    names = pd.Index(ad.utils.make_index_unique(pd.Index(proteins.var_names.astype(str))))
    genes = adata[:, ~is_protein].copy()
    genes.obsm[key] = pd.DataFrame(matrix.astype(np.float32), index=adata.obs_names, columns=names)
    return genes, int(is_protein.sum())


def check_input(adata: ad.AnnData, config: QueryConfig, *, role: str) -> tuple[ad.AnnData, dict[str, Any]]:
    """Make one input mappable (proteins in obsm, counts in X, unique names) and say what was found."""
    adata, n_proteins = split_proteins(adata, config.protein_key)
    source = use_counts(adata, role=role)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    require_obs_key(adata, config.condition_key, role=role, config_key="condition_key")
    adata.obs[config.condition_key] = adata.obs[config.condition_key].astype(str)
    return adata, {"cells": adata.n_obs, "genes": adata.n_vars, "proteins": n_proteins, "counts_from": source}


def check_inputs(state: MappingState) -> None:
    """Make both inputs mappable, with precise errors; then the pre-flight's checks (gene overlap and the rest)."""
    from scarches_api.preflight import preflight

    c = state.config
    if state.query.uns.get("input_format", "").startswith("10x") and c.condition_key not in state.query.obs.columns:
        # A 10x matrix is one sample and carries no obs columns: it is one batch.
        state.query.obs[c.condition_key] = "query"
    if state.bundle is not None:
        meta = state.bundle.metadata
        report = preflight(c, query=state.query, reference_genes=meta["var_names"], reference_obs=state.bundle.obs,
                           protein_names=meta.get("protein_names"))
    else:
        report = preflight(c, query=state.query, reference=state.reference)
    state.summary["preflight"] = report.to_dict()
    _check_each_input(state)
    report.raise_if_error()


def _check_each_input(state: MappingState) -> None:
    c = state.config
    if state.reference is not None:
        state.reference, state.summary["reference"] = check_input(state.reference, c, role="reference")
        require_obs_key(state.reference, c.cell_type_key, role="reference", config_key="cell_type_key")
        state.reference.obs[c.cell_type_key] = state.reference.obs[c.cell_type_key].astype(str)
    state.query, state.summary["query"] = check_input(state.query, c, role="query")
    # The query's own labels (if any) are kept for comparison; the model sees the query as unlabeled.
    if c.cell_type_key in state.query.obs.columns:
        state.query.obs["query_cell_type"] = state.query.obs[c.cell_type_key].astype(str)
    shared = set(state.reference_obs[c.condition_key].astype(str)) & set(state.query.obs[c.condition_key])
    if shared:
        # Surgery adds new batch columns only for unseen batches; renaming keeps query cells apart from reference ones.
        state.query.obs[c.condition_key] = "query:" + state.query.obs[c.condition_key]
        state.summary["renamed_query_batches"] = sorted(shared)


# --- load reference ---------------------------------------------------------------------------------------------
def load_reference(state: MappingState, ref_model: Path | None, pretrained: Any = None) -> None:
    """The reference model: the bundle's, a given one, one loaded from ``ref_model``, or one trained now."""
    if state.bundle is not None or pretrained is not None:
        model = state.bundle.model if state.bundle is not None else pretrained
        if state.bundle is not None and type(model) is not state.family.scvi_cls:
            raise ModelLoadError(
                f"the reference bundle holds a {type(model).__name__} model, but model '{state.config.model}' was asked "
                f"for; build a {state.config.model} bundle, or set full_recompute with reference_data"
            )
        state.reference_model = state.family.adopt(state.family.adapt_reference(model, state.reference))
        state.summary["reference_model"] = "bundle"
        return
    state.reference_model = state.family.reference_model(state.reference, ref_model)
    state.summary["reference_model"] = "pretrained" if ref_model is not None and state.family.use_pretrained() else "trained"


# --- align genes ------------------------------------------------------------------------------------------------
def align_genes(state: MappingState) -> None:
    """Reorder the query's genes to the reference model's, padding missing ones with zeros; refuse too little overlap."""
    from scvi.model.base import ArchesMixin

    from scarches_api.genes import harmonise

    ref_genes = pd.Index(ArchesMixin.prepare_query_anndata(state.query, state.reference_model, return_reference_var_names=True))
    query_genes = pd.Index(state.query.var_names)
    # Ensembl IDs (versioned or not) and symbols, old names and aliases, are brought to the reference's naming.
    harmonised = harmonise(list(query_genes), list(ref_genes))
    if harmonised.matched:
        renamed = [harmonised.mapping.get(g, g) for g in query_genes]
        keep = ~pd.Index(renamed).duplicated()
        if not keep.all():
            state.query = state.query[:, keep].copy()
        state.query.var_names = pd.Index(renamed)[keep]
    shared = ref_genes.intersection(pd.Index(state.query.var_names))
    share = len(shared) / max(len(ref_genes), 1)
    state.summary["genes"] = {
        "reference": len(ref_genes), "query": len(query_genes), "shared": len(shared), "share": round(share, 4),
        "routes": {k: v for k, v in harmonised.routes.items() if v},
    }
    log.info("query has %d of the reference's %d genes (%.1f%%)", len(shared), len(ref_genes), 100 * share)
    if share < state.config.min_gene_overlap:
        raise InputDataError(
            f"the query has {len(shared)} of the reference model's {len(ref_genes)} genes ({share:.1%}); at least "
            f"{state.config.min_gene_overlap:.0%} are needed (config key 'min_gene_overlap'). {_gene_id_hint(ref_genes, query_genes)}",
            details=state.summary["genes"],
        )
    state.family.prepare_query(state.query, state.reference)
    ArchesMixin.prepare_query_anndata(state.query, state.reference_model, inplace=True)


def _gene_id_hint(ref_genes: pd.Index, query_genes: pd.Index) -> str:
    def kind(genes: pd.Index) -> str:
        sample = [str(g) for g in genes[:200]]
        ensembl = sum(g.upper().startswith(("ENSG", "ENSMUSG")) for g in sample)
        return "Ensembl IDs" if ensembl > len(sample) / 2 else "gene symbols"

    ref_kind, query_kind = kind(ref_genes), kind(query_genes)
    if ref_kind != query_kind:
        return f"The reference uses {ref_kind} and the query {query_kind}: convert the query's var_names to {ref_kind}."
    return "Check that both files use the same gene naming and species."


# --- surgery, train ---------------------------------------------------------------------------------------------
def surgery(state: MappingState) -> None:
    state.query_model = state.family.surgery(state.reference_model, state.query)


def train(state: MappingState) -> None:
    state.family.train_query(state.query_model)


# --- predict ----------------------------------------------------------------------------------------------------
def predict(state: MappingState) -> None:
    """Latent space of all cells, a label with its uncertainty for every query cell, imputed proteins (totalVI)."""
    c, family, model = state.config, state.family, state.query_model
    ref_labels = state.reference_obs[c.cell_type_key].astype(str).to_numpy()
    state.labelled = ref_labels != c.unlabeled_key
    if state.bundle is not None:
        state.reference_latent = state.bundle.latent
        index = state.bundle.labelled_index
        own = state.bundle.self_distances(c.knn_neighbors)
    else:
        state.reference_latent = family.latent(model, state.reference)
        labelled_latent = state.reference_latent[state.labelled]
        index = ReferenceIndex(labelled_latent)
        own = reference_self_distances(index, labelled_latent, c.knn_neighbors)
    state.query_latent = family.latent(model, state.query)
    state.neighbours = index.neighbours(state.query_latent, c.knn_neighbors)
    mean_distance = state.neighbours.distances.mean(axis=1)
    state.mapping_distance = mapping_distance(mean_distance, own)
    threshold = novelty_threshold(own, c.novelty_false_rate)
    state.novel = mean_distance > threshold["distance"]
    state.summary["novelty"] = {**threshold, "novel_cells": int(state.novel.sum())}
    # The query's own neighbourhoods, searched once: batch mixing and the label smoothing both use them.
    query_self = ReferenceIndex(state.query_latent).neighbours(state.query_latent, max(c.knn_neighbors, c.smooth_neighbors) + 1)
    state.mixing = batch_mixing(query_self.distances[:, 1:], state.neighbours.distances, c.knn_neighbors,
                                int(state.labelled.sum()))
    knn = label_probabilities(state.neighbours, ref_labels[state.labelled])
    knn.index = state.query.obs_names
    state.label_candidates = {"knn": knn}
    method = "knn"
    if family.has_classifier:
        classifier = family.classify(model, state.query).drop(columns=[c.unlabeled_key], errors="ignore")
        columns = classifier.columns.union(knn.columns)
        classifier = classifier.reindex(columns=columns, fill_value=0.0)
        knn = knn.reindex(columns=columns, fill_value=0.0)
        state.label_candidates.update(classifier=classifier, blend=(classifier + knn) / 2)
        method = c.label_method
    if c.smooth_neighbors:
        smoothed = smooth_over_query(state.label_candidates[method], query_self.indices[:, : c.smooth_neighbors + 1])
        method = f"{method}+smoothed"
        state.label_candidates[method] = smoothed
    state.summary["label_method"] = method
    state.labels = _novel_unknown(state, call_labels(state.label_candidates[method], unknown_label=c.unlabeled_key,
                                                     threshold=c.unknown_threshold))
    state.levels = {key: _novel_unknown(state, level_labels(state, key)) for key in c.cell_type_keys if key != c.cell_type_key}
    state.imputed = impute(state)


def _novel_unknown(state: MappingState, call: LabelCall) -> LabelCall:
    """With ``novel_as_unknown``, cells flagged novel are labelled unlabeled_key (their uncertainty stays)."""
    if state.config.novel_as_unknown:
        call.label = np.where(state.novel, state.config.unlabeled_key, call.label)
    return call


def level_labels(state: MappingState, key: str) -> LabelCall:
    """Labels at another level. When each main label belongs to one label of this level (a hierarchy), a level's
    probability is the sum of its members' — so the levels never contradict each other; else a kNN at this level."""
    c = state.config
    obs = state.reference_obs
    if key not in obs.columns:
        raise InputDataError(f"reference data has no obs column '{key}' (config key 'cell_type_keys')")
    labelled = state.labelled & (obs[key].astype(str).to_numpy() != c.unlabeled_key)
    pairs = pd.DataFrame({"fine": obs[c.cell_type_key].astype(str).to_numpy()[labelled], "level": obs[key].astype(str).to_numpy()[labelled]})
    parents = pairs.drop_duplicates().groupby("fine")["level"].agg(list)
    probs = state.labels.probabilities
    if (parents.str.len() == 1).all() and set(probs.columns) <= set(parents.index):
        summed = probs.T.groupby(parents.str[0].reindex(probs.columns).to_numpy()).sum().T
    else:
        index = ReferenceIndex(state.reference_latent[labelled])
        summed = label_probabilities(index.neighbours(state.query_latent, c.knn_neighbors), pairs["level"].to_numpy())
        summed.index = state.query.obs_names
    return call_labels(summed, unknown_label=c.unlabeled_key, threshold=c.unknown_threshold)


def impute(state: MappingState) -> pd.DataFrame | None:
    """totalVI: proteins of reference cells (stored in the bundle, or imputed) and of query cells; else None."""
    batches = sorted(state.reference_obs[state.config.condition_key].astype(str).unique())
    query_part = state.family.impute(state.query_model, state.query, batches)
    if query_part is None:
        return None
    if state.bundle is not None and state.bundle.proteins is not None:
        ref_part = pd.DataFrame(state.bundle.proteins, index=state.bundle.obs.index, columns=query_part.columns)
    else:
        ref_part = state.family.impute(state.query_model, state.reference, batches)
    return pd.concat([ref_part, query_part])


# --- embed ------------------------------------------------------------------------------------------------------
def embed(state: MappingState) -> None:
    """2-D coordinates: query cells placed into the bundle's stored embedding, or a UMAP of all cells recomputed."""
    if state.bundle is not None:
        query_xy = place(state.neighbours, state.bundle.embedding[state.labelled])
        state.embedding = np.vstack([state.bundle.embedding, query_xy])
        state.summary["embedding"] = "query placed into the bundle's reference embedding"
        return
    from scarches_api.embedding import umap_embedding

    joint = np.vstack([state.reference_latent, state.query_latent])
    state.embedding = umap_embedding(joint, n_neighbors=state.config.n_neighbors, seed=state.config.seed)
    state.summary["embedding"] = "UMAP of reference and query"


# --- write ------------------------------------------------------------------------------------------------------
def result_table(state: MappingState) -> pd.DataFrame:
    """One row per cell, reference then query: id, x, y, batch, type, cell_type, predicted, uncertainty, extras."""
    c, ref_obs, query, labels = state.config, state.reference_obs, state.query, state.labels
    n_ref = len(ref_obs)
    table = pd.DataFrame(
        {
            "cell_id": np.concatenate([ref_obs.index.to_numpy(), query.obs_names.to_numpy()]).astype(str),
            "x": state.embedding[:, 0],
            "y": state.embedding[:, 1],
            "batch": np.concatenate([ref_obs[c.condition_key].to_numpy(), query.obs[c.condition_key].to_numpy()]).astype(str),
            "type": ["reference"] * n_ref + ["query"] * query.n_obs,
            "cell_type": np.concatenate([ref_obs[c.cell_type_key].astype(str).to_numpy(), labels.label]).astype(str),
            "predicted": ["no"] * n_ref + ["yes"] * query.n_obs,
            "uncertainty": np.concatenate([np.zeros(n_ref), labels.uncertainty]),
            "mapping_distance": np.concatenate([np.full(n_ref, np.nan), state.mapping_distance]),
            "novel": [""] * n_ref + np.where(state.novel, "yes", "no").tolist(),
        }
    )
    # Each label source's own uncertainty, so a user can see where the classifier and the neighbours disagree.
    for name in ("knn", "classifier"):
        if name in state.label_candidates:
            own = 1.0 - state.label_candidates[name].to_numpy().max(axis=1)
            table[f"uncertainty_{name}"] = np.concatenate([np.zeros(n_ref), np.clip(own, 0.0, 1.0)])
    for key, call in state.levels.items():
        table[f"cell_type:{key}"] = np.concatenate([ref_obs[key].astype(str).to_numpy(), call.label]).astype(str)
        table[f"uncertainty:{key}"] = np.concatenate([np.zeros(n_ref), call.uncertainty])
        if key in query.obs.columns:
            table[f"query_cell_type:{key}"] = [""] * n_ref + query.obs[key].astype(str).tolist()
    if "query_cell_type" in query.obs.columns:
        table["query_cell_type"] = [""] * n_ref + query.obs["query_cell_type"].astype(str).tolist()
    if state.imputed is not None:
        table = pd.concat([table, state.imputed.add_prefix("protein:").reset_index(drop=True)], axis=1)
    for col in reported_columns(ref_obs.columns.union(query.obs.columns), c):
        values = pd.concat([_column(ref_obs, col), _column(query.obs, col)], ignore_index=True)
        table[f"obs:{col}" if col in table.columns else col] = values.to_numpy()
    return table


def reported_columns(columns: pd.Index, config: QueryConfig) -> list[str]:
    """obs columns copied into the table: all but the unwanted ones, those with own columns and scvi-tools' own."""
    skip = set(config.unwanted_labels) | {config.condition_key, config.cell_type_key, "query_cell_type", *config.cell_type_keys}
    return [str(col) for col in columns if col not in skip and not str(col).startswith("_")]


def _column(obs: pd.DataFrame, col: str) -> pd.Series:
    if col in obs.columns:
        return obs[col].astype(object)
    return pd.Series([None] * len(obs), dtype=object)


def companion(output: Path, name: str) -> Path:
    """A file written next to the table: ``cells.tsv`` → ``cells.report.json``."""
    return output.with_name(f"{output.stem}.{name}")


def write_reports(
    state: MappingState, table: pd.DataFrame, output: Path, timings: dict[str, float], inputs: dict, model: Path | None
) -> dict[str, Path]:
    """report.json (pre-flight, per-job metrics, summary) and the self-contained report.html."""
    from scarches_api.provenance import write_json_atomic
    from scarches_api.report_html import render_report

    summary = {k: v for k, v in state.summary.items() if k != "preflight"}
    metrics = job_metrics(table, unknown_label=state.config.unlabeled_key, mixing=state.mixing, timings=dict(timings))
    report = {"title": f"scarches-api: {state.config.model} mapping", "metrics": metrics, "summary": summary,
              "preflight": state.summary.get("preflight")}
    json_path = write_json_atomic(companion(output, "report.json"), report)
    html_path = companion(output, "report.html")
    html = render_report(table, report)
    write_atomic(html_path, lambda handle: handle.write(html))
    return {"report": json_path, "report_html": html_path}


def write_manifest(state: MappingState, output: Path, inputs: dict, outputs: dict) -> Path:
    """manifest.json: versions, hardware, seed, the used config and checksums of inputs and outputs."""
    from scarches_api.provenance import build_manifest, write_json_atomic

    manifest = build_manifest(
        state.config.used(),
        {k: v for k, v in inputs.items() if v is not None},
        {k: v for k, v in outputs.items() if v is not None},
        state.config.seed,
    )
    return write_json_atomic(companion(output, "manifest.json"), manifest)


def write_model(model: Any, model_out: Path) -> Path:
    """Save the fine-tuned model as a folder holding model.pt, replacing any previous one only once complete."""
    return write_folder_atomic(model_out, lambda staging: model.save(str(staging), overwrite=True, save_anndata=False))


# --- the whole job ----------------------------------------------------------------------------------------------
class _Stages:
    """Times each stage and reports its start to the progress callback."""

    def __init__(self, report: ProgressCallback) -> None:
        self.report = report
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.report(name, {})
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        log.info("stage %s took %.1f s", name, self.timings[name])


def run_mapping(
    config: QueryConfig,
    *,
    query: str | Path,
    output: str | Path,
    reference: str | Path | None = None,
    bundle: ReferenceBundle | None = None,
    ref_model: str | Path | None = None,
    model_out: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> MappingResult:
    """Map the query onto the reference and write the per-cell table to ``output`` (and the model to ``model_out``).

    The reference is either the reference data (``reference``, the full path: its latent space and a joint UMAP are
    recomputed) or a reference bundle (``bundle``, the fast path: only the query is computed). Raises a ScarchesError
    (InputDataError, ModelLoadError, ...) naming the problem when the inputs can't be mapped; nothing is written at
    ``output`` or ``model_out`` unless the whole mapping succeeded.
    """
    import scvi

    if reference is None and bundle is None:
        raise ValueError("give reference data, a reference bundle, or both (full recompute with the bundle's model)")
    # With both, the bundle only supplies the trained model: everything else is recomputed from the reference data.
    pretrained = bundle.model if (bundle is not None and reference is not None) else None
    if pretrained is not None:
        bundle = None
    report = progress or (lambda stage, info: None)
    scvi.settings.seed = config.seed
    family = MODELS[config.model](config, on_epoch=lambda i, n: report("epoch", {"epoch": i, "epochs": n}))
    stage = _Stages(report)
    with stage("check"):
        reference_data = read_input(reference, role="reference") if reference is not None else None
        genes = (bundle.metadata["var_names"] if bundle is not None
                 else reference_data.var_names[~_is_protein(reference_data.var)])
        state = MappingState(
            config=config,
            family=family,
            query=read_input(query, role="query", keep=genes_of(genes), chunk_cells=config.query_chunk_cells),
            reference=reference_data,
            bundle=bundle,
        )
        check_inputs(state)
    with stage("reference"):
        model_dir = normalise_model_path(ref_model) if ref_model is not None and bundle is None else None
        load_reference(state, model_dir, pretrained)
    with stage("align"):
        align_genes(state)
    with stage("surgery"):
        surgery(state)
    with stage("train"):
        train(state)
    with stage("predict"):
        predict(state)
    with stage("embed"):
        embed(state)
    state.summary["cells"] = {"reference": len(state.reference_obs), "query": state.query.n_obs}
    state.summary["epochs_trained"] = family.epochs_trained
    with stage("write"):
        table = result_table(state)
        saved_model = write_model(state.query_model, Path(model_out)) if model_out is not None else None
        inputs = {"query": Path(query), "reference": Path(reference) if reference is not None else None}
        if state.bundle is not None:
            inputs["reference_bundle"] = state.bundle.path
        reports = write_reports(state, table, Path(output), stage.timings, inputs, saved_model)
        written = write_table(table, output)
    reports["manifest"] = write_manifest(state, Path(output), inputs, {"table": written, "model": saved_model, **reports})
    return MappingResult(
        table=table,
        output=written,
        model_dir=saved_model,
        summary=state.summary,
        timings=stage.timings,
        label_candidates=state.label_candidates,
        reports=reports,
    )
