"""Finding out what a saved scvi-tools model is before loading it, so failures can name the cause.

A pretrained model may come as a folder holding ``model.pt`` (scvi-tools >= 0.15), a single ``*.pt`` file, or a
legacy folder of ``model_params.pt`` + ``attr.pkl`` + ``var_names.csv`` (scvi-tools < 0.15).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scarches_api.errors import ModelLoadError, NotFoundError

MODEL_FILE = "model.pt"
LEGACY_FILE = "model_params.pt"


@dataclass(frozen=True)
class SavedModel:
    dir_path: Path
    class_name: str
    scvi_version: str
    var_names: np.ndarray
    legacy: bool = False


def normalise_model_path(path: str | Path) -> Path:
    """A folder holding ``model.pt`` for a folder or any ``*.pt`` file (copied under the expected name)."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"pretrained model {path} does not exist")
    if path.is_dir():
        return path
    if path.name == MODEL_FILE:
        return path.parent
    folder = Path(tempfile.mkdtemp(prefix="scarches-model-"))
    shutil.copyfile(path, folder / MODEL_FILE)
    return folder


def inspect_saved_model(path: str | Path) -> SavedModel:
    """Read a saved model's class, the scvi-tools version that saved it and its genes, without building it."""
    folder = normalise_model_path(path)
    if (folder / LEGACY_FILE).exists() and not (folder / MODEL_FILE).exists():
        raise ModelLoadError(
            f"{folder} holds a model saved by scvi-tools < 0.15 (model_params.pt). Convert it once with "
            "scvi.model.<Model>.convert_legacy_save(old_dir, new_dir) and pass the new folder as ref_path."
        )
    model_file = folder / MODEL_FILE
    if not model_file.exists():
        raise ModelLoadError(f"{folder} holds no {MODEL_FILE}; give the folder a saved scvi-tools model was written to")
    import torch

    try:
        # scvi-tools itself loads with weights_only=False: the attr_dict holds numpy and pandas objects.
        saved = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{model_file.name} is not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict) or "attr_dict" not in saved:
        raise ModelLoadError(f"{model_file.name} is a torch file but not a saved scvi-tools model (no attr_dict)")
    attr = saved["attr_dict"]
    registry = attr.get("registry_", {}) or {}
    class_name = registry.get("model_name") or _guess_class(attr)
    version = registry.get("scvi_version", "unknown (before 0.15)")
    var_names = saved.get("var_names")
    if isinstance(var_names, dict):  # MuData-saved models keep one array per modality
        var_names = np.concatenate([np.asarray(v) for v in var_names.values()])
    return SavedModel(folder, class_name, str(version), np.asarray(var_names, dtype=str))


def _guess_class(attr: dict) -> str:
    init = attr.get("init_params_", {})
    if "unlabeled_category" in str(init):
        return "SCANVI"
    if "protein" in str(attr.get("registry_", "")):
        return "TOTALVI"
    return "SCVI"
