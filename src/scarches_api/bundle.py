"""Reference bundles: everything a query needs from the reference, computed once, in open formats.

A bundle is a folder (or an S3 prefix) holding:

- ``metadata.json`` — format version, model class, scvi-tools version, genes, keys, the scvi-tools registry and init
  parameters as JSON, the obs columns stored, and the SHA-256 of every other file;
- ``model_state.pt`` — the model's weights only (a tensor dict, loaded with ``torch.load(weights_only=True)``);
- ``latent.npy``, ``embedding.npy`` — the reference cells' latent and 2-D coordinates;
- ``obs.parquet`` — the reference cells' id, batch, cell type and the other columns reported in the result table;
- ``proteins.npy`` — totalVI only: the reference cells' imputed proteins.

No pickle is loaded from a bundle (it may come from elsewhere): the model is rebuilt from its class name (one of three
allowed), a placeholder AnnData carrying the registry's categories, and the weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scarches_api.errors import ModelLoadError, NotFoundError
from scarches_api.io.table import write_folder_atomic

FORMAT = 1
METADATA = "metadata.json"
FILES = ("model_state.pt", "latent.npy", "embedding.npy", "obs.parquet")
PROTEINS = "proteins.npy"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / METADATA).is_file()


@dataclass
class ReferenceBundle:
    """A loaded bundle: the rebuilt reference model and the stored per-cell arrays."""

    path: Path
    metadata: dict[str, Any]
    model: Any
    latent: np.ndarray
    embedding: np.ndarray
    obs: pd.DataFrame
    proteins: np.ndarray | None = None

    @cached_property
    def labelled_index(self):
        """The kNN index over the labelled reference cells' latent, built on first use and kept with the bundle."""
        from scarches_api.labels import ReferenceIndex

        return ReferenceIndex(self.latent[self.labelled])

    @cached_property
    def labelled(self) -> np.ndarray:
        return self.obs[self.metadata["cell_type_key"]].astype(str).to_numpy() != self.metadata["unlabeled_key"]

    def self_distances(self, k: int) -> np.ndarray:
        """The labelled reference cells' own sorted mean kNN distances (for mapping distances), kept per k."""
        from scarches_api.quality import reference_self_distances

        cache = self.__dict__.setdefault("_self_distances", {})
        if k not in cache:
            cache[k] = reference_self_distances(self.labelled_index, self.latent[self.labelled], k)
        return cache[k]


# --- writing ----------------------------------------------------------------------------------------------------
def write_bundle(
    out_dir: str | Path,
    *,
    model: Any,
    latent: np.ndarray,
    embedding: np.ndarray,
    obs: pd.DataFrame,
    config: dict[str, Any],
    proteins: np.ndarray | None = None,
    protein_names: list[str] | None = None,
) -> Path:
    """Write a bundle folder; it appears at ``out_dir`` only once complete."""
    import scvi
    import torch

    def fill(staging: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in model.module.state_dict().items()}, staging / "model_state.pt")
        np.save(staging / "latent.npy", np.asarray(latent, dtype=np.float32))
        np.save(staging / "embedding.npy", np.asarray(embedding, dtype=np.float32))
        obs.astype(str).to_parquet(staging / "obs.parquet")
        files = list(FILES)
        if proteins is not None:
            np.save(staging / PROTEINS, np.asarray(proteins, dtype=np.float32))
            files.append(PROTEINS)
        registry = model.registry
        metadata = {
            "format": FORMAT,
            "model_class": type(model).__name__,
            "scvi_version": scvi.__version__,
            "n_cells": int(len(obs)),
            "var_names": [str(v) for v in model.adata.var_names],
            "protein_names": protein_names,
            "condition_key": config["condition_key"],
            "cell_type_key": config["cell_type_key"],
            "unlabeled_key": config["unlabeled_key"],
            "obs_columns": [str(c) for c in obs.columns],
            "registry": _to_json(registry),
            "init_params": _to_json(model.init_params_),
            "config": config,
            "checksums": {name: _sha256(staging / name) for name in files},
        }
        (staging / METADATA).write_text(json.dumps(metadata, indent=1))

    return write_folder_atomic(out_dir, fill)


# --- reading ----------------------------------------------------------------------------------------------------
def read_bundle(path: str | Path) -> ReferenceBundle:
    """Load a bundle folder, checking every file against its checksum first."""
    import torch

    path = Path(path)
    if not is_bundle(path):
        raise NotFoundError(f"{path} is not a reference bundle (no {METADATA})")
    metadata = json.loads((path / METADATA).read_text())
    if metadata.get("format") != FORMAT:
        raise ModelLoadError(f"bundle {path.name} has format {metadata.get('format')}; this service reads format {FORMAT}")
    for name, digest in metadata["checksums"].items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise ModelLoadError(f"bundle file {name} is missing or does not match its checksum; rebuild the bundle")
    state = torch.load(path / "model_state.pt", map_location="cpu", weights_only=True)
    model = _rebuild_model(metadata, state)
    proteins = np.load(path / PROTEINS) if PROTEINS in metadata["checksums"] else None
    return ReferenceBundle(
        path=path,
        metadata=metadata,
        model=model,
        latent=np.load(path / "latent.npy"),
        embedding=np.load(path / "embedding.npy"),
        obs=pd.read_parquet(path / "obs.parquet"),
        proteins=proteins,
    )


def _rebuild_model(metadata: dict[str, Any], state: dict[str, Any]) -> Any:
    from scvi.model import SCANVI, SCVI, TOTALVI

    classes = {"SCVI": SCVI, "SCANVI": SCANVI, "TOTALVI": TOTALVI}
    name = metadata["model_class"]
    if name not in classes:
        raise ModelLoadError(f"bundle holds a {name} model; bundles may hold {', '.join(classes)}")
    cls = classes[name]
    registry = _from_json(metadata["registry"])
    init = _from_json(metadata["init_params"])
    placeholder = _placeholder_adata(registry, metadata)
    cls.setup_anndata(placeholder, source_registry=registry, **registry["setup_args"])
    kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
    non_kwargs = dict(init.get("non_kwargs", {}))
    if name == "TOTALVI":
        # The weights hold the learned protein background; computing a prior from placeholder data would only fail.
        non_kwargs["empirical_protein_background_prior"] = False
    try:
        model = cls(placeholder, **non_kwargs, **kwargs)
        model.module.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"bundle model could not be rebuilt with this scvi-tools: {exc}") from None
    model.module.eval()
    model.is_trained_ = True
    return model


def _placeholder_adata(registry: dict[str, Any], metadata: dict[str, Any]) -> ad.AnnData:
    """Cells enough to carry every batch and label category of the registry; their values are never used."""
    fields = registry["field_registries"]
    batches = list(fields["batch"]["state_registry"]["categorical_mapping"])
    labels_state = fields.get("labels", {}).get("state_registry", {})
    labels = list(labels_state.get("categorical_mapping", [])) or ["_"]
    n = max(len(batches), len(labels))
    obs = pd.DataFrame(index=[f"placeholder-{i}" for i in range(n)])
    setup = registry["setup_args"]
    obs[setup["batch_key"]] = pd.Categorical([batches[i % len(batches)] for i in range(n)], categories=batches)
    if setup.get("labels_key"):
        obs[setup["labels_key"]] = pd.Categorical([labels[i % len(labels)] for i in range(n)], categories=labels)
    genes = metadata["var_names"]
    # One count per cell: a non-empty library, in case anything looks at library sizes.
    counts = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), np.zeros(n, dtype=int))), shape=(n, len(genes)))
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))
    protein_key = setup.get("protein_expression_obsm_key")
    if protein_key:
        names = metadata["protein_names"]
        adata.obsm[protein_key] = pd.DataFrame(np.ones((n, len(names)), dtype=np.float32), index=obs.index, columns=names)
    return adata


# --- in-memory cache --------------------------------------------------------------------------------------------
class BundleCache:
    """Loaded bundles by (path, fingerprint), least recently used dropped first; safe across threads."""

    def __init__(self, max_items: int = 2) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str], ReferenceBundle] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str | Path, fingerprint: str | None = None) -> ReferenceBundle:
        path = Path(path)
        key = (str(path.resolve()), fingerprint or _local_fingerprint(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            bundle = read_bundle(path)
            self.loads += 1
            self._items[key] = bundle
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return bundle


def _local_fingerprint(path: Path) -> str:
    stat = (path / METADATA).stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


# --- helpers ----------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _to_json(value: Any) -> Any:
    """Registry and init params as plain JSON; arrays are tagged so they come back as arrays."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, pd.Index)):
        array = np.asarray(value)
        return {"__array__": [_to_json(v) for v in array.tolist()], "dtype": str(array.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ModelLoadError(f"cannot store a {type(value).__name__} in a bundle's metadata")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            dtype = value["dtype"]
            return np.asarray(value["__array__"], dtype=object if dtype == "object" else dtype)
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value
