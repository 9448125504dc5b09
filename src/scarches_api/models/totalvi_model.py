"""totalVI: joint RNA + surface-protein model; a query may be RNA-only, and proteins are imputed for every cell."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.model import TOTALVI
from scvi.model.base import BaseModelClass

from scarches_api.errors import InputDataError
from scarches_api.models.base import SurgeryModel

# Imputation averages this many posterior samples per cell; more is smoother and proportionally slower.
_IMPUTE_SAMPLES = 5


class TotalviModel(SurgeryModel):
    name = "totalVI"
    scvi_cls = TOTALVI
    reference_epochs_field = "totalvi_max_epochs_1"
    query_epochs_field = "totalvi_max_epochs_2"
    pretrained_flag = "pre_trained_totalVI"
    accepts_saved = ("TOTALVI",)

    def architecture(self) -> dict[str, Any]:
        c = self.config
        # TOTALVAE names its depth per network and always injects covariates where it needs them.
        return dict(
            n_latent=c.n_latent,
            n_layers_encoder=c.n_layers,
            n_layers_decoder=c.n_layers,
            encode_covariates=c.encode_covariates,
            use_layer_norm=c.use_layer_norm,
            use_batch_norm=c.use_batch_norm,
        )

    def prepare_reference(self, adata: ad.AnnData) -> None:
        key = self.config.protein_key
        if key not in adata.obsm:
            raise InputDataError(
                f"reference data has no protein counts for totalVI: no obsm['{key}'] (config key 'protein_key') and "
                "no var features with feature_types 'Antibody Capture'. Use scVI or scANVI for RNA-only references."
            )
        TOTALVI.setup_anndata(adata, protein_expression_obsm_key=key, batch_key=self.config.condition_key)

    def prepare_query(self, query: ad.AnnData, reference: ad.AnnData | None) -> None:
        """Give the query the reference's protein panel; proteins it lacks are zeros, which totalVI treats as missing."""
        key = self.config.protein_key
        panel = self.protein_names
        present = query.obsm.get(key)
        if present is None:
            query.obsm[key] = pd.DataFrame(np.zeros((query.n_obs, len(panel)), dtype=np.float32), index=query.obs_names, columns=panel)
            return
        frame = present if isinstance(present, pd.DataFrame) else pd.DataFrame(np.asarray(present), index=query.obs_names)
        query.obsm[key] = frame.reindex(columns=panel, fill_value=0).astype(np.float32)

    def adopt(self, model: BaseModelClass) -> BaseModelClass:
        # Read from the registry, not the AnnData manager: a loaded pretrained model has no data attached.
        state = model.registry["field_registries"][REGISTRY_KEYS.PROTEIN_EXP_KEY]["state_registry"]
        self.protein_names = [str(p) for p in state["column_names"]]
        return model

    def train_query(self, query_model: BaseModelClass) -> None:
        # The scArches totalVI recipe: no weight decay and no adversarial batch loss while fine-tuning.
        epochs = self.config.totalvi_max_epochs_2
        self.fit(query_model, epochs, stage="query", weight_decay=0.0, scale_adversarial_loss=0.0)

    def impute(self, model: BaseModelClass, adata: ad.AnnData, reference_batches: list[str]) -> pd.DataFrame:
        """Denoised protein expression of every cell, as if measured in the reference batches."""
        _, proteins = model.get_normalized_expression(
            adata,
            n_samples=_IMPUTE_SAMPLES,
            transform_batch=reference_batches,
            include_protein_background=True,
            sample_protein_mixing=False,
            return_mean=True,
            batch_size=1024,
        )
        return pd.DataFrame(np.asarray(proteins), index=adata.obs_names, columns=self.protein_names)
