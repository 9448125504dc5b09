"""Local cache of what queries read again and again: reference bundles and pretrained models.

On disk, a copy per (key, fingerprint) — the S3 ETag or local mtime+size of the bundle's metadata.json or of the model
object — so a second query against an unchanged reference downloads nothing, and a changed one is fetched afresh.
Bounded in bytes, least recently used removed first. In memory, loaded bundles (with their kNN index) are kept by the
same fingerprint (``bundle.BundleCache``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path, PurePosixPath

from scarches_api.bundle import METADATA, BundleCache, ReferenceBundle
from scarches_api.io.storage import LocalStorage, Storage

log = logging.getLogger(__name__)


class ReferenceCache:
    """Disk cache under ``root`` holding at most ``max_bytes``, plus an in-memory LRU of loaded bundles."""

    def __init__(self, root: str | Path, *, max_bytes: int, max_bundles_in_memory: int = 2) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.bundles = BundleCache(max_items=max_bundles_in_memory)
        self._lock = threading.Lock()

    def is_bundle(self, storage: Storage, key: str) -> bool:
        return storage.exists(_join(key, METADATA))

    def bundle(self, storage: Storage, key: str) -> ReferenceBundle:
        """The bundle at ``key``, downloaded only when its metadata.json changed since the last copy."""
        fingerprint = storage.fingerprint(_join(key, METADATA))
        folder = self._local_copy(storage, key, fingerprint)
        return self.bundles.get(folder, fingerprint)

    def model(self, storage: Storage, key: str) -> Path:
        """A pretrained model (a ``*.pt`` object or a prefix holding model.pt) as a local path."""
        single = key.endswith(".pt")
        folder = self._local_copy(storage, key, storage.fingerprint(key if single else _join(key, "model.pt")))
        if single and folder.is_dir():
            return folder / PurePosixPath(key).name
        return folder

    def _local_copy(self, storage: Storage, key: str, fingerprint: str) -> Path:
        if isinstance(storage, LocalStorage):
            return storage.fetch_tree(key, self.root)  # already on this disk: read in place
        name = hashlib.sha256(f"{key}\0{fingerprint}".encode()).hexdigest()[:32]
        target = self.root / name
        with self._lock:
            if target.exists():
                os.utime(target)  # most recently used
                return target
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
            try:
                storage.fetch_tree(key, staging)
                staging.replace(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._evict(keep=target)
            return target

    def _evict(self, keep: Path) -> None:
        entries = sorted((p for p in self.root.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in entries}
        total = sum(sizes.values())
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            log.info("reference cache: removing %s (%d bytes) to stay under %d bytes", entry.name, sizes[entry], self.max_bytes)
            shutil.rmtree(entry, ignore_errors=True)
            total -= sizes[entry]


def _join(key: str, name: str) -> str:
    return f"{key.rstrip('/')}/{name}"



@lru_cache(maxsize=4)
def shared_cache(root: str, max_bytes: int) -> ReferenceCache:
    """One cache per process and folder, shared by every job the process runs."""
    return ReferenceCache(root, max_bytes=max_bytes)
