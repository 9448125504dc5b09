"""The mapping as named steps, each testable alone; the CLI, the sync API and the async jobs all call ``run_mapping``.

check inputs → load reference → align genes → surgery → train → predict → embed → write
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import anndata as ad
import numpy as np
import pandas as pd

from scarches_api.config import QueryConfig
from scarches_api.errors import InputDataError
from scarches_api.io.h5ad import read_h5ad, require_obs_key, use_counts
from scarches_api.io.table import write_table
from scarches_api.labels import LabelCall, call_labels, knn_probabilities
from scarches_api.models import MODELS, SurgeryModel
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


@dataclass
class MappingState:
    """What the steps hand each other."""

    config: QueryConfig
    family: SurgeryModel
    reference: ad.AnnData
    query: ad.AnnData
    summary: dict[str, Any] = field(default_factory=dict)
    reference_model: Any = None
    query_model: Any = None
    latent: np.ndarray | None = None
    labels: LabelCall | None = None
    # Every label method's probabilities (knn; classifier and blend for scANVI), for scoring and reports.
    label_candidates: dict[str, pd.DataFrame] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    imputed: pd.DataFrame | None = None


# --- check inputs -----------------------------------------------------------------------------------------------
def split_proteins(adata: ad.AnnData, key: str) -> tuple[ad.AnnData, int]:
    """Move 'Antibody Capture' features from var into ``obsm[key]`` (a cells × proteins frame).

    Returns the gene-only AnnData and the number of proteins moved.
    """
    if "feature_types" not in adata.var.columns:
        return adata, 0
    is_protein = (adata.var["feature_types"].astype(str) == _PROTEIN_FEATURE_TYPE).to_numpy()
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
    c = state.config
    state.reference, state.summary["reference"] = check_input(state.reference, c, role="reference")
    require_obs_key(state.reference, c.cell_type_key, role="reference", config_key="cell_type_key")
    state.reference.obs[c.cell_type_key] = state.reference.obs[c.cell_type_key].astype(str)
    state.query, state.summary["query"] = check_input(state.query, c, role="query")
    # The query's own labels (if any) are kept for comparison; the model sees the query as unlabeled.
    if c.cell_type_key in state.query.obs.columns:
        state.query.obs["query_cell_type"] = state.query.obs[c.cell_type_key].astype(str)
    shared = set(state.reference.obs[c.condition_key]) & set(state.query.obs[c.condition_key])
    if shared:
        # Surgery adds new batch columns only for unseen batches; renaming keeps query cells apart from reference ones.
        state.query.obs[c.condition_key] = "query:" + state.query.obs[c.condition_key]
        state.summary["renamed_query_batches"] = sorted(shared)


# --- load reference ---------------------------------------------------------------------------------------------
def load_reference(state: MappingState, ref_model: Path | None) -> None:
    state.reference_model = state.family.reference_model(state.reference, ref_model)
    state.summary["reference_model"] = "pretrained" if ref_model is not None and state.family.use_pretrained() else "trained"


# --- align genes ------------------------------------------------------------------------------------------------
def align_genes(state: MappingState) -> None:
    """Reorder the query's genes to the reference model's, padding missing ones with zeros; refuse too little overlap."""
    from scvi.model.base import ArchesMixin

    ref_genes = pd.Index(ArchesMixin.prepare_query_anndata(state.query, state.reference_model, return_reference_var_names=True))
    query_genes = pd.Index(state.query.var_names)
    shared = ref_genes.intersection(query_genes)
    share = len(shared) / max(len(ref_genes), 1)
    state.summary["genes"] = {"reference": len(ref_genes), "query": len(query_genes), "shared": len(shared), "share": round(share, 4)}
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
    """Latent space of all cells, and a label with its uncertainty for every query cell."""
    c, family, model = state.config, state.family, state.query_model
    ref_latent = family.latent(model, state.reference)
    query_latent = family.latent(model, state.query)
    state.latent = np.vstack([ref_latent, query_latent])
    ref_labels = state.reference.obs[c.cell_type_key].astype(str).to_numpy()
    labelled = ref_labels != c.unlabeled_key
    knn = knn_probabilities(ref_latent[labelled], ref_labels[labelled], query_latent, c.knn_neighbors)
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
    state.summary["label_method"] = method
    probs = state.label_candidates[method]
    state.labels = call_labels(probs, unknown_label=c.unlabeled_key, threshold=c.unknown_threshold)
    state.imputed = family.impute(model, _joint(state), sorted(state.reference.obs[c.condition_key].unique()))


def _joint(state: MappingState) -> ad.AnnData:
    return ad.concat([state.reference, state.query], merge="same", uns_merge="first")


# --- embed ------------------------------------------------------------------------------------------------------
def embed(state: MappingState) -> None:
    from scarches_api.embedding import umap_embedding

    state.embedding = umap_embedding(state.latent, n_neighbors=state.config.n_neighbors, seed=state.config.seed)


# --- write ------------------------------------------------------------------------------------------------------
def result_table(state: MappingState) -> pd.DataFrame:
    """One row per cell, reference then query: id, x, y, batch, type, cell_type, predicted, uncertainty, extras."""
    c = state.config
    ref, query = state.reference, state.query
    n_ref = ref.n_obs
    labels = state.labels
    table = pd.DataFrame(
        {
            "cell_id": np.concatenate([ref.obs_names.to_numpy(), query.obs_names.to_numpy()]).astype(str),
            "x": state.embedding[:, 0],
            "y": state.embedding[:, 1],
            "batch": np.concatenate([ref.obs[c.condition_key].to_numpy(), query.obs[c.condition_key].to_numpy()]).astype(str),
            "type": ["reference"] * n_ref + ["query"] * query.n_obs,
            "cell_type": np.concatenate([ref.obs[c.cell_type_key].astype(str).to_numpy(), labels.label]).astype(str),
            "predicted": ["no"] * n_ref + ["yes"] * query.n_obs,
            "uncertainty": np.concatenate([np.zeros(n_ref), labels.uncertainty]),
        }
    )
    if "query_cell_type" in query.obs.columns:
        table["query_cell_type"] = [""] * n_ref + query.obs["query_cell_type"].astype(str).tolist()
    if state.imputed is not None:
        proteins = state.imputed.add_prefix("protein:").reset_index(drop=True)
        table = pd.concat([table, proteins], axis=1)
    skip = set(c.unwanted_labels) | {c.condition_key, c.cell_type_key, "query_cell_type", "_scvi_batch", "_scvi_labels"}
    extras = [col for col in ref.obs.columns.union(query.obs.columns) if col not in skip and not str(col).startswith("_")]
    for col in extras:
        values = pd.concat(
            [_column(ref.obs, col), _column(query.obs, col)], ignore_index=True
        )
        if col in table.columns:
            col = f"obs:{col}"
        table[col] = values.to_numpy()
    return table


def _column(obs: pd.DataFrame, col: str) -> pd.Series:
    if col in obs.columns:
        return obs[col].astype(object)
    return pd.Series([None] * len(obs), dtype=object)


def write_model(model: Any, model_out: Path) -> Path:
    """Save the fine-tuned model as a folder holding model.pt, replacing any previous one only once complete."""
    model_out = Path(model_out)
    model_out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_out.name}.", dir=model_out.parent))
    try:
        model.save(str(staging), overwrite=True, save_anndata=False)
        if model_out.exists():
            shutil.rmtree(model_out)
        staging.replace(model_out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_out


# --- the whole job ----------------------------------------------------------------------------------------------
def run_mapping(
    config: QueryConfig,
    *,
    reference: str | Path,
    query: str | Path,
    output: str | Path,
    ref_model: str | Path | None = None,
    model_out: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> MappingResult:
    """Map the query onto the reference and write the per-cell table to ``output`` (and the model to ``model_out``).

    Raises a ScarchesError (InputDataError, ModelLoadError, ...) naming the problem when the inputs can't be mapped;
    nothing is written at ``output`` or ``model_out`` unless the whole mapping succeeded.
    """
    import scvi

    report = progress or (lambda stage, info: None)
    scvi.settings.seed = config.seed
    family = MODELS[config.model](config, on_epoch=lambda i, n: report("epoch", {"epoch": i, "epochs": n}))
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        report(name, {})
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 3)
        log.info("stage %s took %.1f s", name, timings[name])

    with stage("check"):
        state = MappingState(
            config=config,
            family=family,
            reference=read_h5ad(reference, role="reference"),
            query=read_h5ad(query, role="query"),
        )
        check_inputs(state)
    with stage("reference"):
        model_dir = normalise_model_path(ref_model) if ref_model is not None else None
        load_reference(state, model_dir)
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
    with stage("write"):
        table = result_table(state)
        saved_model = write_model(state.query_model, Path(model_out)) if model_out is not None else None
        written = write_table(table, output)
    state.summary["cells"] = {"reference": state.reference.n_obs, "query": state.query.n_obs}
    return MappingResult(
        table=table,
        output=written,
        model_dir=saved_model,
        summary=state.summary,
        timings=timings,
        label_candidates=state.label_candidates,
    )
