"""Where a job's inputs come from and its outputs go: a local data folder or an S3 bucket.

Keys are what the caller sends (``reference_data``, ``query_data``, ``ref_path``, ``output_path``, ``model_path``):
plain keys in the configured bucket, ``s3://bucket/key`` URIs, or, for the embedded default, paths confined to the
data folder. Downloads stream to disk; a reader never sees a partial object at an output key.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from scarches_api.errors import ConfigError, NotFoundError, StorageError

if TYPE_CHECKING:
    from scarches_api.config import Settings

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
_MiB = 1 << 20
_CONTENT_TYPES = {".tsv": "text/tab-separated-values", ".csv": "text/csv", ".json": "application/json"}


class Storage(ABC):
    """A place keys are read from and written to.

    ``downloads`` counts objects copied from the storage to local disk, so tests and metrics can tell a cached read
    from a fresh one.
    """

    downloads: int = 0

    @abstractmethod
    def fetch(self, key: str, dest: Path) -> Path:
        """Make the object at ``key`` readable locally; return the path to read (``dest`` or the file itself)."""

    @abstractmethod
    def fetch_tree(self, key: str, dest_dir: Path) -> Path:
        """Make a model readable locally: a single object (``.../model.pt``) or every object under a prefix."""

    @abstractmethod
    def publish(self, local_path: Path, key: str) -> str:
        """Write a local file to ``key`` so readers see the old object or the whole new one; return its location."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when ``key`` names an object, or a prefix (folder) holding objects."""

    @abstractmethod
    def fingerprint(self, key: str) -> str:
        """A token that changes whenever the object at ``key`` changes (S3 ETag; local mtime and size)."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError unless the storage can be read and written now (readiness)."""

    @abstractmethod
    def describe(self) -> str:
        """Where this storage is, for logs and the readiness answer (no secrets)."""

    def publish_tree(self, local_dir: Path, key: str) -> list[str]:
        """Write a saved model folder: to a ``.pt`` key its model.pt alone, else every file under the prefix ``key``."""
        local_dir = Path(local_dir)
        if key.endswith(".pt"):
            return [self.publish(local_dir / MODEL_FILE, key)]
        prefix = key.rstrip("/")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        return [self.publish(p, f"{prefix}/{p.relative_to(local_dir).as_posix()}") for p in files]


# --- local folder -----------------------------------------------------------------------------------------------
class LocalStorage(Storage):
    """Keys are paths inside ``root``; nothing outside it can be read or written."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def locate(self, key: str) -> Path:
        """The path a key names, refusing URIs of other storages and anything that leaves the data folder."""
        if not key or not key.strip():
            raise ConfigError("an empty storage key was given")
        if key.startswith("s3://"):
            raise ConfigError(
                f"key {key!r} is an S3 URI, but this service stores in the local folder {self.root}; "
                "set AWS_BUCKET (and AWS_ENDPOINT, AWS_ACCESS_KEY, AWS_SECRET_KEY) to use S3"
            )
        raw = key[len("file://") :] if key.startswith("file://") else key
        if ".." in PurePosixPath(raw).parts:
            raise ConfigError(f"key {key!r} contains '..'; keys must stay inside the data folder")
        path = Path(raw) if Path(raw).is_absolute() else self.root / raw
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise ConfigError(f"key {key!r} is outside the data folder {self.root}")
        return resolved

    def fetch(self, key: str, dest: Path) -> Path:
        # Read in place: copying a multi-GB .h5ad within one machine would only double the disk use.
        path = self.locate(key)
        if not path.is_file():
            raise NotFoundError(f"key {key!r} not found in the data folder", details={"key": key})
        return path

    def fetch_tree(self, key: str, dest_dir: Path) -> Path:
        path = self.locate(key)
        if not path.exists():
            raise NotFoundError(f"key {key!r} not found in the data folder", details={"key": key})
        return path

    def publish(self, local_path: Path, key: str) -> str:
        target = self.locate(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)

    def exists(self, key: str) -> bool:
        return self.locate(key).exists()

    def fingerprint(self, key: str) -> str:
        path = self.locate(key)
        if not path.exists():
            raise NotFoundError(f"key {key!r} not found in the data folder", details={"key": key})
        stat = path.stat()
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageError(f"the data folder {self.root} is not a readable and writable folder")

    def describe(self) -> str:
        return f"local folder {self.root}"


# --- S3 ---------------------------------------------------------------------------------------------------------
class S3Storage(Storage):
    """Objects in an S3 bucket (AWS or any S3-compatible server at ``endpoint``), signed with SigV4."""

    def __init__(
        self,
        bucket: str,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        region: str | None = None,
        multipart_threshold: int = 64 * _MiB,
        multipart_chunksize: int = 64 * _MiB,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint = endpoint or None
        # Path-style addressing: S3-compatible servers rarely have per-bucket DNS names.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=config,
        )
        # Multipart transfers stream parts to and from disk; a large .h5ad is never held whole in memory.
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, max_concurrency=4
        )

    def locate(self, key: str) -> tuple[str, str]:
        """(bucket, object key) for a plain key in the configured bucket or an ``s3://bucket/key`` URI."""
        if key.startswith("s3://"):
            bucket, _, obj = key[len("s3://") :].partition("/")
            if not bucket or not obj:
                raise ConfigError(f"S3 URI {key!r} must look like s3://bucket/key")
            return bucket, obj
        if not key or not key.strip():
            raise ConfigError("an empty storage key was given")
        if "://" in key:
            raise ConfigError(f"key {key!r} is neither a key in bucket {self.bucket!r} nor an s3:// URI")
        return self.bucket, key

    def fetch(self, key: str, dest: Path) -> Path:
        bucket, obj = self.locate(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # s3transfer writes to a temporary name and renames on success, so dest is never a partial file.
        self._call(key, lambda: self.client.download_file(bucket, obj, str(dest), Config=self.transfer))
        self.downloads += 1
        return dest

    def fetch_tree(self, key: str, dest_dir: Path) -> Path:
        bucket, obj = self.locate(key)
        dest_dir = Path(dest_dir)
        if not obj.endswith("/") and self._object_exists(key, bucket, obj):
            return self.fetch(key, dest_dir / PurePosixPath(obj).name)
        prefix = obj.rstrip("/") + "/"
        keys = [k for k in self._list(key, bucket, prefix) if not k.endswith("/")]
        if not keys:
            raise NotFoundError(
                f"key {key!r} not found in bucket {bucket!r} (neither an object nor a prefix)", details={"key": key}
            )
        for k in keys:
            relative = PurePosixPath(k[len(prefix) :])
            if ".." in relative.parts:
                raise StorageError(f"object {k!r} under {key!r} has '..' in its name; refusing to write it")
            target = dest_dir.joinpath(*relative.parts)
            self._call(k, lambda k=k, target=target: self._download(bucket, k, target))
        return dest_dir

    def _download(self, bucket: str, obj: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(bucket, obj, str(target), Config=self.transfer)
        self.downloads += 1

    def publish(self, local_path: Path, key: str) -> str:
        bucket, obj = self.locate(key)
        extra = {"ContentType": _CONTENT_TYPES.get(PurePosixPath(obj).suffix.lower(), "application/octet-stream")}
        # One PUT or one completed multipart upload: S3 makes the object visible only when it is whole.
        self._call(
            key,
            lambda: self.client.upload_file(str(local_path), bucket, obj, ExtraArgs=extra, Config=self.transfer),
        )
        return f"s3://{bucket}/{obj}"

    def exists(self, key: str) -> bool:
        bucket, obj = self.locate(key)
        if self._object_exists(key, bucket, obj):
            return True
        return bool(self._list(key, bucket, obj.rstrip("/") + "/", limit=1))

    def fingerprint(self, key: str) -> str:
        bucket, obj = self.locate(key)
        head = self._call(key, lambda: self.client.head_object(Bucket=bucket, Key=obj))
        return str(head["ETag"]).strip('"')

    def check(self) -> None:
        self._call(f"s3://{self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket), bucket_check=True)

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self.endpoint or 'AWS'}"

    # --- helpers ----------------------------------------------------------------------------------------------
    def _object_exists(self, key: str, bucket: str, obj: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=bucket, Key=obj)
            return True
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise self._translate(key, exc) from None
        except Exception as exc:
            raise self._translate(key, exc) from None

    def _list(self, key: str, bucket: str, prefix: str, limit: int | None = None) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"MaxItems": limit} if limit else {})
        try:
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except Exception as exc:
            raise self._translate(key, exc) from None
        return keys

    def _call(self, key: str, action: Any, *, bucket_check: bool = False) -> Any:
        try:
            return action()
        except Exception as exc:
            raise self._translate(key, exc, bucket_check=bucket_check) from None

    def _translate(self, key: str, exc: Exception, *, bucket_check: bool = False) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in _MISSING and bucket_check:
                return StorageError(f"bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}")
            if code in _MISSING:
                where = "" if key.startswith("s3://") else f" in bucket {self.bucket!r}"
                return NotFoundError(f"key {key!r} not found{where}", details={"key": key})
            if code in _DENIED:
                return StorageError(
                    f"S3 refused access to {key!r} ({code}): check AWS_ACCESS_KEY, AWS_SECRET_KEY and the bucket policy",
                    details={"key": key, "code": code},
                )
            return StorageError(f"S3 failed on {key!r}: {code}", details={"key": key, "code": code})
        if isinstance(exc, BotoCoreError):
            return StorageError(f"S3 at {self.endpoint or 'AWS'} failed on {key!r}: {exc}", details={"key": key})
        if isinstance(exc, OSError):
            return StorageError(f"local disk failed while transferring {key!r}: {exc}", details={"key": key})
        return exc


_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken"}


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


def storage_from_settings(settings: Settings) -> Storage:
    """S3 when AWS_BUCKET is set (the original's deployment), else the local data folder (the embedded default)."""
    if settings.aws_bucket:
        return S3Storage(
            settings.aws_bucket, settings.aws_endpoint, settings.aws_access_key, settings.aws_secret_key
        )
    return LocalStorage(settings.data_dir)
