"""Bounded inputs: request body size, input object size, cell and gene counts, and which storage keys may be named.

Every limit is a setting (SCARCHES_MAX_BODY_BYTES, SCARCHES_MAX_OBJECT_MB, SCARCHES_MAX_CELLS, SCARCHES_MAX_GENES,
SCARCHES_ALLOWED_BUCKETS); an error names the limit, the value that broke it and the setting that raises it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path, PurePosixPath
from typing import Any

from scarches_api.errors import ConfigError, InputDataError, ScarchesError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MiB = 1 << 20
DEFAULT_MAX_BODY_BYTES = 1 << 20
KEY_FIELDS = ("reference_data", "query_data", "ref_path", "output_path", "model_path")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class TooLargeError(ScarchesError):
    """A request body or an input object is larger than the server accepts."""

    status_code = 413
    kind = "too_large"


class LimitError(ScarchesError):
    """The input data is beyond a configured size (cells, genes)."""

    status_code = 422
    kind = "limit"


class ForbiddenKeyError(ScarchesError):
    """A storage key names a bucket this service may not use."""

    status_code = 403
    kind = "forbidden"


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, default)
    return default if value is None else value


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value or () if str(v).strip()]


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# --- request bodies -----------------------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware: answer 413 ``{"error", "kind": "too_large"}`` to a request whose body passes ``max_bytes``.

    A declared Content-Length over the limit is refused before the app runs and before any body is read; otherwise the
    bytes the app reads are counted (chunked bodies, or a Content-Length that lies) and reading stops at the first
    chunk past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _error(self) -> TooLargeError:
        return TooLargeError(
            f"the request body is larger than the limit of {self.max_bytes} bytes (SCARCHES_MAX_BODY_BYTES); "
            "a query's body is its configuration: name the data by storage keys instead of sending it",
            details={"limit_bytes": self.max_bytes},
        )

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(self._error().to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server rejects a malformed length itself; the counting below still holds
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        started = exceeded = refused = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, refused
            if exceeded:
                # The app turned our exception into an answer of its own (e.g. FastAPI's 400 for an unreadable
                # body): the caller gets the 413 instead.
                if not started and not refused:
                    refused = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as exc:
            if not (exceeded or _contains(exc, _BodyTooLarge)):
                raise
        if exceeded and not started and not refused:
            await self._refuse(send)


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return True
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return False


# --- input objects ------------------------------------------------------------------------------------------------
def check_object_size(key: str, size_bytes: int | None, settings: Any) -> None:
    """413 when the object at ``key`` is larger than SCARCHES_MAX_OBJECT_MB (unknown sizes pass)."""
    limit_mb = int(_setting(settings, "max_object_mb", 50_000))
    if size_bytes is None or limit_mb <= 0 or size_bytes <= limit_mb * _MiB:
        return
    raise TooLargeError(
        f"object {key!r} is {_fmt_bytes(size_bytes)}, over the limit of {limit_mb} MB per input object "
        "(SCARCHES_MAX_OBJECT_MB); subset the data, or ask the operator to raise SCARCHES_MAX_OBJECT_MB",
        details={"key": key, "size_bytes": size_bytes, "limit_mb": limit_mb},
    )


def object_size(storage: Any, key: str) -> int | None:
    """The size in bytes of the object at ``key`` (S3 HEAD, or the local file's size); None for a prefix/folder."""
    from scarches_api.io.storage import LocalStorage, S3Storage

    if isinstance(storage, LocalStorage):
        path = storage.locate(key)
        return path.stat().st_size if path.is_file() else None
    if isinstance(storage, S3Storage):
        bucket, obj = storage.locate(key)
        if obj.endswith("/"):
            return None
        from botocore.exceptions import ClientError

        try:
            return int(storage.client.head_object(Bucket=bucket, Key=obj)["ContentLength"])
        except ClientError:
            return None  # missing or a prefix: fetching says which, with the storage's own message
    return None


def check_shape(n_cells: int, n_genes: int, role: str, settings: Any) -> None:
    """422 when the ``role`` ("query", "reference") data has more cells or genes than SCARCHES_MAX_CELLS/_GENES."""
    max_cells = int(_setting(settings, "max_cells", 2_000_000))
    max_genes = int(_setting(settings, "max_genes", 100_000))
    problems, details = [], {"role": role, "n_cells": n_cells, "n_genes": n_genes}
    if max_cells > 0 and n_cells > max_cells:
        problems.append(
            f"{n_cells:,} cells, over the limit of {max_cells:,} cells per input (SCARCHES_MAX_CELLS)"
        )
        details["max_cells"] = max_cells
    if max_genes > 0 and n_genes > max_genes:
        problems.append(
            f"{n_genes:,} genes, over the limit of {max_genes:,} genes (SCARCHES_MAX_GENES)"
        )
        details["max_genes"] = max_genes
    if problems:
        settings_named = " and ".join(s for s in ("SCARCHES_MAX_CELLS", "SCARCHES_MAX_GENES") if any(s in p for p in problems))
        raise LimitError(
            f"{role} data has " + " and ".join(problems) + f"; split or subset the data, or ask the operator to raise "
            f"{settings_named}",
            details=details,
        )


def h5ad_shape(path: str | Path, *, role: str) -> tuple[int, int]:
    """(cells, genes) of an .h5ad file from its HDF5 metadata alone (h5py; nothing unpickled, no matrix read).

    A file that is not HDF5, truncated or corrupt is an InputDataError (422) saying so.
    """
    import h5py

    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise InputDataError(f"{role} data: {path.name} can't be read: {exc.strerror or exc}") from None
    if head != _HDF5_SIGNATURE:
        raise InputDataError(
            f"{role} data: {path.name} is not an .h5ad file (no HDF5 signature; "
            f"{'empty file' if not head else 'it starts with ' + repr(head[:8])}). Write it with AnnData.write_h5ad."
        )
    try:
        with h5py.File(path, "r") as f:
            n_obs = _axis_length(f, "obs")
            n_vars = _axis_length(f, "var")
            if (n_obs is None or n_vars is None) and "X" in f:
                x = f["X"]
                shape = tuple(x.attrs.get("shape", ())) if isinstance(x, h5py.Group) else x.shape
                if len(shape) == 2:
                    n_obs = int(shape[0]) if n_obs is None else n_obs
                    n_vars = int(shape[1]) if n_vars is None else n_vars
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError for truncated or damaged files
        raise InputDataError(
            f"{role} data: {path.name} is a damaged or truncated .h5ad file ({type(exc).__name__}: {exc}); "
            "upload it again (check its size and checksum)"
        ) from None
    if n_obs is None or n_vars is None:
        raise InputDataError(f"{role} data: {path.name} is an HDF5 file but not an AnnData .h5ad (no obs/var)")
    return n_obs, n_vars


def _axis_length(f: Any, name: str) -> int | None:
    import h5py

    if name not in f:
        return None
    group = f[name]
    if isinstance(group, h5py.Dataset):  # legacy anndata: a compound dataset, one row per cell/gene
        return int(group.shape[0])
    index = group.attrs.get("_index", "_index")
    if isinstance(index, bytes):
        index = index.decode()
    if index in group:
        node = group[index]
        if isinstance(node, h5py.Group):  # a categorical/string-array index
            node = node.get("codes") or node.get("values")
        if node is not None:
            return int(node.shape[0])
    return None


def read_h5ad_checked(path: str | Path, *, role: str, settings: Any) -> Any:
    """Check the file's shape against the limits from its metadata, then read it with anndata (never pickle)."""
    from scarches_api.io.h5ad import read_h5ad

    n_cells, n_genes = h5ad_shape(path, role=role)
    check_shape(n_cells, n_genes, role, settings)
    return read_h5ad(path, role=role)


# --- storage keys -------------------------------------------------------------------------------------------------
def check_bucket(uri_bucket: str, settings: Any) -> None:
    """403 unless ``uri_bucket`` (of an s3:// URI) is AWS_BUCKET or listed in SCARCHES_ALLOWED_BUCKETS."""
    allowed = [b for b in [getattr(settings, "aws_bucket", None), *_split(_setting(settings, "allowed_buckets", ""))] if b]
    if uri_bucket in allowed:
        return
    listed = ", ".join(repr(b) for b in allowed) or "none"
    raise ForbiddenKeyError(
        f"bucket {uri_bucket!r} is not one this service reads or writes (allowed: {listed}); use keys in the "
        "service's bucket, or ask the operator to add the bucket to SCARCHES_ALLOWED_BUCKETS",
        details={"bucket": uri_bucket},
    )


def check_key(key: str, settings: Any, *, config_key: str = "key") -> None:
    """Refuse a storage key that could reach outside where it should: '..' segments, a leading '/' (S3), control
    characters, over-long keys, and s3:// URIs of buckets not allowed (ConfigError 422 / ForbiddenKeyError 403)."""
    details = {"keys": [config_key]}
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"key '{config_key}': an empty storage key was given", details=details)
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigError(f"key '{config_key}': {key!r} contains control characters", details=details)
    if len(key.encode()) > 1024:
        raise ConfigError(f"key '{config_key}': the storage key is longer than 1024 bytes", details=details)
    s3 = bool(getattr(settings, "aws_bucket", None))
    obj = key
    if key.startswith("s3://"):
        bucket, _, obj = key[len("s3://") :].partition("/")
        if not bucket or not obj:
            raise ConfigError(f"key '{config_key}': S3 URI {key!r} must look like s3://bucket/key", details=details)
        if s3:
            check_bucket(bucket, settings)
    parts = PurePosixPath(obj.replace("\\", "/")).parts
    if ".." in parts:
        raise ConfigError(f"key '{config_key}': {key!r} contains '..'; keys may not leave their folder", details=details)
    if s3 and obj.startswith("/"):
        raise ConfigError(f"key '{config_key}': S3 key {key!r} starts with '/'; give it without", details=details)


def check_storage_keys(config: Any, settings: Any) -> None:
    """``check_key`` for every storage key a job's configuration names (reference_data, query_data, ref_path,
    output_path, model_path)."""
    for name in KEY_FIELDS:
        value = getattr(config, name, None)
        if value:
            check_key(value, settings, config_key=name)
