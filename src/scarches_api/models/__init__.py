"""The surgery models by name: scVI, scANVI, totalVI, all on one base (``models.base.SurgeryModel``)."""

from __future__ import annotations

from scarches_api.models.base import SurgeryModel
from scarches_api.models.scanvi_model import ScanviModel
from scarches_api.models.scvi_model import ScviModel
from scarches_api.models.totalvi_model import TotalviModel

MODELS: dict[str, type[SurgeryModel]] = {cls.name: cls for cls in (ScviModel, ScanviModel, TotalviModel)}

__all__ = ["MODELS", "SurgeryModel", "ScviModel", "ScanviModel", "TotalviModel"]
