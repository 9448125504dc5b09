"""Finding out what a saved scvi-tools model is before loading it, so failures can name the cause.

A pretrained model may come as a folder holding ``model.pt`` (scvi-tools >= 0.15), a single ``*.pt`` file, or a
legacy folder of ``model_params.pt`` + ``attr.pkl`` + ``var_names.csv`` (scvi-tools < 0.15).
"""

from __future__ import annotations

import _compat_pickle
import pickle
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

    saved = load_restricted(model_file)
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


# What a saved scvi-tools model.pt may reference: numpy arrays and dtypes, pandas frames and indexes, plain
# containers. Data constructors only; anything else (a class with a __reduce__ that runs code) is refused.
_SAFE_NAMES = (
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar", "numpy.ndarray", "numpy.dtype",
    "pandas.core.indexes.base.Index", "pandas.core.indexes.base._new_Index", "pandas.core.indexes.range.RangeIndex",
    "pandas.core.frame.DataFrame", "pandas.core.series.Series", "pandas.core.internals.managers.BlockManager",
    "pandas.core.internals.managers.SingleBlockManager", "pandas._libs.internals._unpickle_block",
    "pandas.core.arrays.categorical.Categorical", "pandas.core.dtypes.dtypes.CategoricalDtype",
    "collections.defaultdict", "collections.OrderedDict", "builtins.slice", "builtins.bytes", "builtins.dict",
    "builtins.set", "builtins.frozenset", "builtins.int", "builtins.float", "builtins.complex", "builtins.str",
    "builtins.list", "builtins.tuple", "builtins.bool",
    *(f"numpy.dtypes.{n}" for n in ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
      "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "ObjectDType",
      "StrDType", "BytesDType")),
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Resolves only torch's tensor-rebuilding names and ``_SAFE_NAMES``; any other global is refused unloaded."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        import torch._weights_only_unpickler as wou

        # Protocol-2 pickles name Python 2 modules (__builtin__); the base class maps them the same way.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        full = f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
        if full in _SAFE_NAMES or full in wou._get_allowed_globals() or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{full}' is not allowed")


class _DataOnlyPickle:
    """What torch.load wants of a pickle module."""

    Unpickler = _DataOnlyUnpickler
    UnpicklingError = pickle.UnpicklingError
    load = staticmethod(lambda file, **kw: _DataOnlyUnpickler(file, **kw).load())


def load_restricted(model_file: Path) -> dict:
    """Load a model.pt admitting only tensors and numpy/pandas data constructors as pickle globals.

    A pretrained model may come from anywhere, and a pickle can run code as it loads. (torch's own weights_only
    loader can't read scvi-tools' attr_dict, which holds a defaultdict.) scvi-tools then loads the same bytes with
    ``weights_only=False``, which is safe once this load has passed. Raises ModelLoadError naming the first
    global that is not data.
    """
    import torch

    try:
        return torch.load(model_file, map_location="cpu", weights_only=False, pickle_module=_DataOnlyPickle)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{model_file.name} references code, not only data ({exc}); a pretrained model is loaded only when its "
            "file holds tensors, numpy arrays and pandas tables. Re-save it with scvi-tools' model.save(), or build a "
            "reference bundle with `scarches-api build-reference`"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"{model_file.name} is not a readable torch file ({type(exc).__name__}: {exc})") from None


def _guess_class(attr: dict) -> str:
    init = attr.get("init_params_", {})
    if "unlabeled_category" in str(init):
        return "SCANVI"
    if "protein" in str(attr.get("registry_", "")):
        return "TOTALVI"
    return "SCVI"
