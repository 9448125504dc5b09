"""One base for the three surgery models; each model is a short subclass that swaps parts by class attribute.

The steps follow scArches on scvi-tools: train (or load) a reference model, ``prepare_query_anndata`` to align the
query's genes, ``load_query_data`` for the surgery, fine-tune on the query, then read latent spaces, labels and
(totalVI) imputed proteins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
from scvi.model.base import BaseModelClass

from scarches_api.config import QueryConfig
from scarches_api.errors import InputDataError, ModelLoadError
from scarches_api.models.saved import SavedModel, inspect_saved_model

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, int], None]


class SurgeryModel:
    """A reference model family that supports scArches surgery."""

    name: ClassVar[str]
    scvi_cls: ClassVar[type[BaseModelClass]]
    # Config fields holding the reference and query epoch counts.
    reference_epochs_field: ClassVar[str]
    query_epochs_field: ClassVar[str]
    # Which flag says whether a pretrained model at ref_path is used.
    pretrained_flag: ClassVar[str]
    # scvi-tools classes whose saved models this family can start from.
    accepts_saved: ClassVar[tuple[str, ...]]
    # True when the model predicts labels itself (scANVI's classifier); else labels come from a kNN on the latent.
    has_classifier: ClassVar[bool] = False
    # Extra keyword arguments to the scvi-tools constructor.
    init_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: QueryConfig, on_epoch: EpochCallback | None = None) -> None:
        self.config = config
        self.on_epoch = on_epoch
        self.epochs_trained: dict[str, int] = {}

    # --- data preparation -------------------------------------------------------------------------------------
    def prepare_reference(self, adata: ad.AnnData) -> None:
        """Register the reference AnnData with scvi-tools (setup_anndata)."""
        self.scvi_cls.setup_anndata(adata, batch_key=self.config.condition_key)

    def prepare_query(self, query: ad.AnnData, reference: ad.AnnData | None) -> None:
        """Give the query what the reference model expects beyond genes (label column, protein matrix)."""
        if self.has_classifier:
            # Query cells are unlabeled for the classifier; the user's own labels stay in query_cell_type.
            query.obs[self.config.cell_type_key] = self.config.unlabeled_key

    # --- architecture arguments --------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        c = self.config
        return dict(
            n_layers=c.n_layers,
            n_latent=c.n_latent,
            encode_covariates=c.encode_covariates,
            deeply_inject_covariates=c.deeply_inject_covariates,
            use_layer_norm=c.use_layer_norm,
            use_batch_norm=c.use_batch_norm,
            **self.init_kwargs,
        )

    # --- reference ---------------------------------------------------------------------------------------------
    def use_pretrained(self) -> bool:
        return bool(self.config.ref_path) and bool(getattr(self.config, self.pretrained_flag))

    def train_reference(self, reference: ad.AnnData) -> BaseModelClass:
        """Train the reference model from scratch on the reference cells."""
        self.prepare_reference(reference)
        model = self.scvi_cls(reference, **self.architecture())
        self.fit(model, getattr(self.config, self.reference_epochs_field), stage="reference")
        return model

    def load_reference(self, model_dir: Path, reference: ad.AnnData | None) -> BaseModelClass:
        """Load a pretrained reference model saved by scvi-tools (folder holding model.pt)."""
        saved = inspect_saved_model(model_dir)
        self.check_saved(saved)
        cls = _class_by_name(saved.class_name)
        try:
            return cls.load(str(saved.dir_path), adata=reference, accelerator=self.accelerator())
        except Exception as exc:
            raise ModelLoadError(
                f"the pretrained {saved.class_name} model at ref_path could not be loaded with scvi-tools "
                f"{_scvi_version()}: {exc}. It was saved by scvi-tools {saved.scvi_version}; re-save it with "
                "scvi-tools >= 1.0 or train a new reference (pre_trained_* false)."
            ) from None

    def check_saved(self, saved: SavedModel) -> None:
        if saved.class_name not in self.accepts_saved:
            raise ModelLoadError(
                f"ref_path holds a {saved.class_name} model; model '{self.name}' can start from "
                f"{' or '.join(self.accepts_saved)}. Choose the model that matches, or omit ref_path to train one."
            )

    def reference_model(self, reference: ad.AnnData, ref_model_dir: Path | None) -> BaseModelClass:
        """The reference model: a pretrained one when given and allowed, else trained on the reference."""
        if ref_model_dir is not None and self.use_pretrained():
            model = self.adapt_reference(self.load_reference(ref_model_dir, reference), reference)
        else:
            model = self.train_reference(reference)
        return self.adopt(model)

    def adopt(self, model: BaseModelClass) -> BaseModelClass:
        """Take note of what the reference model fixes (e.g. totalVI's protein panel); returns the model."""
        return model

    def adapt_reference(self, model: BaseModelClass, reference: ad.AnnData) -> BaseModelClass:
        """Turn a loaded reference model into this family (scANVI from scVI); identity by default."""
        return model

    # --- surgery and fine-tuning -------------------------------------------------------------------------------
    def surgery(self, reference_model: BaseModelClass, query: ad.AnnData) -> BaseModelClass:
        """Architecture surgery: a query model sharing the reference weights, with new batch columns."""
        try:
            return type(reference_model).load_query_data(
                query, reference_model, accelerator=self.accelerator(), freeze_dropout=True
            )
        except ValueError as exc:
            raise InputDataError(f"query data does not fit the reference model: {exc}") from None

    def train_query(self, query_model: BaseModelClass) -> None:
        self.fit(query_model, getattr(self.config, self.query_epochs_field), stage="query", weight_decay=0.0)

    def fit(self, model: BaseModelClass, epochs: int, *, stage: str, **plan_kwargs: Any) -> None:
        log.info("training %s %s model for up to %d epochs", stage, type(model).__name__, epochs)
        kwargs: dict[str, Any] = dict(
            max_epochs=epochs,
            batch_size=self.config.batch_size,
            accelerator=self.accelerator(),
            enable_progress_bar=False,
            callbacks=[_EpochReporter(self.on_epoch, epochs)] if self.on_epoch else [],
            early_stopping=False,
        )
        if stage == "query" and self.config.early_stopping:
            # Surgery trains only the new batch weights, which settle in a few epochs; scvi-tools' default patience
            # (45) would never stop within the original's 100 query epochs.
            kwargs.update(
                early_stopping=True,
                early_stopping_patience=self.config.early_stopping_patience,
                early_stopping_monitor="elbo_validation",
                train_size=0.9,
                check_val_every_n_epoch=1,
            )
        if plan_kwargs:
            kwargs["plan_kwargs"] = plan_kwargs
        model.train(**kwargs)
        history = getattr(model, "history", None) or {}
        trained = len(history.get("elbo_train", [])) or epochs
        self.epochs_trained[stage] = self.epochs_trained.get(stage, 0) + int(trained)

    def accelerator(self) -> str:
        if self.config.use_gpu:
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        return "cpu"

    # --- reading results ---------------------------------------------------------------------------------------
    def latent(self, model: BaseModelClass, adata: ad.AnnData) -> np.ndarray:
        return np.asarray(model.get_latent_representation(adata, batch_size=1024))

    def classify(self, model: BaseModelClass, adata: ad.AnnData) -> pd.DataFrame | None:
        """Per-class probabilities from the model's own classifier, or None when it has none."""
        return None

    def impute(self, model: BaseModelClass, adata: ad.AnnData, reference_batches: list[str]) -> pd.DataFrame | None:
        """Imputed values of extra modalities (totalVI proteins) per cell, or None."""
        return None


class _EpochReporter:
    """Lightning callback reporting finished epochs; lightning duck-types callbacks by base class, so subclass lazily."""

    def __new__(cls, report: EpochCallback, total: int):  # type: ignore[misc]
        from lightning.pytorch.callbacks import Callback

        class Reporter(Callback):
            def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ARG002
                report(trainer.current_epoch + 1, total)

        return Reporter()


def _class_by_name(name: str) -> type[BaseModelClass]:
    import scvi.model

    return getattr(scvi.model, name)


def _scvi_version() -> str:
    import scvi

    return scvi.__version__
