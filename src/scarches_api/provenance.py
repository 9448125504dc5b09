"""Provenance: a ``manifest.json`` that says what produced a result, on what, from which exact inputs.

Versions, hardware, seed, the used configuration and SHA-256 checksums of every input and output file, so a result
can be reproduced and audited: re-hashing the files and comparing is enough to tell whether they are the ones used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
# Distribution names as installed (importlib.metadata), reported under the module names people know.
_PACKAGES = {
    "scarches_api": "scarches-api",
    "scvi-tools": "scvi-tools",
    "torch": "torch",
    "anndata": "anndata",
    "scanpy": "scanpy",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "scikit-learn": "scikit-learn",
    "umap-learn": "umap-learn",
    "pynndescent": "pynndescent",
}
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks so large .h5ad files don't have to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum(path: str | Path) -> dict[str, Any]:
    """``{path, sha256, bytes}`` of a file; ``{path, files: {relative: {sha256, bytes}}}`` of a folder (every file in
    it, sorted); ``{path, missing: true}`` when nothing is there."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return {"path": str(path), "files": files}
    return {"path": str(path), "missing": True}


def versions() -> dict[str, str | None]:
    """Installed versions of this package, the modelling stack and Python (None for a package not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in _PACKAGES.items():
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict[str, Any]:
    """CPU count (all and usable by this process), memory, platform, and the GPUs torch sees."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gb": _memory_gb(),
        "gpus": [],
    }
    try:
        import torch  # already imported by a mapping; a stand-alone manifest pays the import once

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda"] = torch.version.cuda
        info["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # a broken CUDA install must not cost the manifest
        info["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return info


def build_manifest(
    config_used: dict[str, Any],
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    seed: int,
) -> dict[str, Any]:
    """The manifest of one mapping: versions, hardware, seed, used config, checksums of inputs and outputs.

    ``inputs``/``outputs`` name each file or folder (e.g. {"query": path, "reference_model": folder}); folders are
    hashed file by file. Write it last, after the outputs are complete, so their checksums are final.
    """
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
        "hardware": hardware(),
        "seed": seed,
        "config": config_used,
        "inputs": {name: checksum(path) for name, path in inputs.items()},
        "outputs": {name: checksum(path) for name, path in outputs.items()},
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays become Python values, NaN/inf become null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # Path, datetime, enums


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON so that a reader sees the old file or the whole new one, never a part (temp file + rename).

    numpy values are converted, NaN/inf written as null, anything else unknown (Path, datetime) as its string.
    """
    from scarches_api.io.table import write_atomic

    def dump(handle) -> None:
        json.dump(_plain(data), handle, indent=2, allow_nan=False)
        handle.write("\n")

    path = write_atomic(path, dump)
    return path
