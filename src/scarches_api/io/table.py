"""Writing the per-cell result table; the separator follows the key's extension (.csv comma, else tab)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd


def separator_for(key: str) -> str:
    return "," if key.lower().endswith(".csv") else "\t"


def write_atomic(path: str | Path, write) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it into place.

    A reader sees the old file or the whole new one, never a part; a failed write leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_folder_atomic(path: str | Path, fill) -> Path:
    """Call ``fill(staging_dir)`` on a temporary folder beside ``path``, then move it into place.

    The folder appears at ``path`` only once complete (a previous one is replaced); a failure leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(staging)
        if path.exists():
            shutil.rmtree(path)
        staging.replace(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def write_table(table: pd.DataFrame, path: str | Path, *, key: str | None = None) -> Path:
    """Write the table atomically, comma-separated for a .csv key and tab-separated otherwise."""
    path = Path(path)
    return write_atomic(path, lambda handle: table.to_csv(handle, sep=separator_for(key or path.name), index=False))


def read_table(path: str | Path, *, key: str | None = None) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path, sep=separator_for(key or path.name))
