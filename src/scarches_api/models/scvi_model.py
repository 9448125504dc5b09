"""scVI: unsupervised reference model; labels are transferred by a weighted kNN on the latent space."""

from __future__ import annotations

from scvi.model import SCVI

from scarches_api.models.base import SurgeryModel


class ScviModel(SurgeryModel):
    name = "scVI"
    scvi_cls = SCVI
    reference_epochs_field = "scvi_max_epochs"
    query_epochs_field = "scvi_max_epochs_query"
    pretrained_flag = "pre_trained_scVI"
    accepts_saved = ("SCVI",)
