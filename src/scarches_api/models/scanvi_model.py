"""scANVI: scVI plus a cell-type classifier; built from a scVI reference with ``from_scvi_model``."""

from __future__ import annotations

import anndata as ad
import pandas as pd
from scvi.model import SCANVI
from scvi.model.base import BaseModelClass

from scarches_api.models.base import SurgeryModel
from scarches_api.models.scvi_model import ScviModel


class ScanviModel(SurgeryModel):
    name = "scANVI"
    scvi_cls = SCANVI
    reference_epochs_field = "scanvi_max_epochs"
    query_epochs_field = "scanvi_max_epochs_query"
    pretrained_flag = "pre_trained_scANVI"
    accepts_saved = ("SCANVI", "SCVI")
    has_classifier = True

    def train_reference(self, reference: ad.AnnData) -> BaseModelClass:
        # scArches' recipe: an unsupervised scVI first, then scANVI initialised from it.
        scvi_model = ScviModel(self.config, self.on_epoch).train_reference(reference)
        return self.adapt_reference(scvi_model, reference)

    def adapt_reference(self, model: BaseModelClass, reference: ad.AnnData) -> BaseModelClass:
        if isinstance(model, SCANVI):
            return model
        # A loaded pretrained scVI has no data attached; scANVI's classifier trains on the labelled reference.
        scanvi = SCANVI.from_scvi_model(
            model,
            unlabeled_category=self.config.unlabeled_key,
            labels_key=self.config.cell_type_key,
            adata=reference,
        )
        self.fit(scanvi, self.config.scanvi_max_epochs, stage="reference")
        return scanvi

    def classify(self, model: BaseModelClass, adata: ad.AnnData) -> pd.DataFrame:
        probs = model.predict(adata, soft=True, batch_size=1024)
        return pd.DataFrame(probs, index=adata.obs_names).astype("float64")
