"""Building a reference bundle: train (or take) the reference model once and store what every query needs."""

from __future__ import annotations

import logging
from pathlib import Path

from scarches_api.bundle import write_bundle
from scarches_api.config import QueryConfig
from scarches_api.embedding import umap_embedding
from scarches_api.io.h5ad import read_h5ad, require_obs_key
from scarches_api.mapping import ProgressCallback, _Stages, check_input, reported_columns
from scarches_api.models import MODELS
from scarches_api.models.saved import normalise_model_path

log = logging.getLogger(__name__)


def build_reference(
    config: QueryConfig,
    *,
    reference: str | Path,
    out_dir: str | Path,
    ref_model: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Path, dict[str, float]]:
    """Write a bundle for ``reference`` to ``out_dir``; return its path and the stage timings."""
    import scvi

    report = progress or (lambda stage, info: None)
    scvi.settings.seed = config.seed
    family = MODELS[config.model](config, on_epoch=lambda i, n: report("epoch", {"epoch": i, "epochs": n}))
    stage = _Stages(report)
    with stage("check"):
        adata, _ = check_input(read_h5ad(reference, role="reference"), config, role="reference")
        require_obs_key(adata, config.cell_type_key, role="reference", config_key="cell_type_key")
        adata.obs[config.cell_type_key] = adata.obs[config.cell_type_key].astype(str)
    with stage("reference"):
        model = family.reference_model(adata, normalise_model_path(ref_model) if ref_model is not None else None)
    with stage("predict"):
        latent = family.latent(model, adata)
        batches = sorted(adata.obs[config.condition_key].unique())
        proteins = family.impute(model, adata, batches)
    with stage("embed"):
        embedding = umap_embedding(latent, n_neighbors=config.n_neighbors, seed=config.seed)
    with stage("write"):
        levels = [k for k in config.cell_type_keys if k in adata.obs.columns and k != config.cell_type_key]
        columns = [config.condition_key, config.cell_type_key, *levels, *reported_columns(adata.obs.columns, config)]
        obs = adata.obs[columns].copy()
        obs.index = obs.index.astype(str)
        path = write_bundle(
            out_dir,
            model=model,
            latent=latent,
            embedding=embedding,
            obs=obs,
            config=config.used(),
            proteins=None if proteins is None else proteins.to_numpy(),
            protein_names=None if proteins is None else [str(p) for p in proteins.columns],
        )
    return path, stage.timings
