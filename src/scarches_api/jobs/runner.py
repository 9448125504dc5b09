"""What a job does, whichever worker runs it (jobs/tasks.py drives it as the Celery task).

Before a job is accepted: its keys are checked (``check_job_inputs``). The mapping (``_map``): fetch inputs →
run_mapping (stages and epochs reported to the job, where a cancel stops it) → publish model, then table. After it:
the webhook (``notify``) for every job that ended, done, failed or cancelled, sync or async.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from scarches_api.config import QueryConfig, Settings
from scarches_api.errors import ConfigError, NotFoundError, ScarchesError
from scarches_api.io.cache import ReferenceCache, shared_cache
from scarches_api.io.storage import Storage
from scarches_api.io.tenx import input_format
from scarches_api.limits import check_object_size, check_shape, check_storage_keys, h5ad_shape, object_size
from scarches_api.jobs.errors import JobInterrupted
from scarches_api.jobs.models import Job
from scarches_api.jobs.store import JobStore
from scarches_api.webhooks import deliver

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("query_data", "output_path")


class ProgressSink(Protocol):
    """Where ``_map`` reports stages and epochs: a JobStore, or a running attempt's view of it (which may raise)."""

    def progress(self, job_id: str, stage: str | None = ..., *, epoch: int | None = ..., epochs: int | None = ...,
                 reset_epochs: bool = ...) -> Any: ...
TRAINING_STAGES = ("reference", "train")


# --- before a job is accepted -----------------------------------------------------------------------------------
def require_keys(config: QueryConfig) -> None:
    """Refuse a configuration that names no inputs, no output or a webhook that is no URL (422 naming the keys).

    reference_data may be left out only when ref_path is given: a reference bundle needs no reference data
    (whether ref_path is one is checked against the storage, in ``check_job_inputs``).
    """
    required = REQUIRED_KEYS if config.ref_path else ("reference_data", *REQUIRED_KEYS)
    missing = [key for key in required if not getattr(config, key)]
    if missing:
        names = ", ".join(f"'{key}'" for key in missing)
        raise ConfigError(
            f"missing required key(s) {names}: give the storage keys of the reference and query .h5ad files "
            "(or a reference bundle as ref_path) and of the result table",
            details={"keys": missing},
        )
    if config.webhook and not config.webhook.startswith(("http://", "https://")):
        raise ConfigError(f"key 'webhook': {config.webhook!r} is not an http(s) URL", details={"keys": ["webhook"]})


def input_keys(config: QueryConfig, *, bundle: bool = False) -> dict[str, str]:
    """The configuration keys this job will read, with their storage keys.

    Against a reference bundle only the query is read (unless ``full_recompute`` asks for the reference data too);
    a pretrained model at ref_path is read only when the model's ``pre_trained_*`` flag allows it.
    """
    keys = {"reference_data": config.reference_data} if not bundle or config.full_recompute else {}
    keys["query_data"] = config.query_data
    if config.ref_path and (bundle or getattr(config, f"pre_trained_{config.model}")):
        keys["ref_path"] = config.ref_path
    return {name: key for name, key in keys.items() if key}


def reference_cache(settings: Settings) -> ReferenceCache:
    return shared_cache(str(settings.cache_dir), settings.cache_max_mb * 1_000_000)


def names_bundle(config: QueryConfig, storage: Storage, settings: Settings) -> bool:
    """True when ref_path names a reference bundle (a prefix holding metadata.json)."""
    if not config.ref_path:
        return False
    try:
        return reference_cache(settings).is_bundle(storage, config.ref_path)
    except ScarchesError as exc:
        raise _named(exc, "ref_path", config.ref_path) from None


def check_job_inputs(config: QueryConfig, storage: Storage, settings: Settings) -> None:
    """Fail before queueing when a key is missing from the configuration or from the storage (404 naming it),
    names a bucket other than the configured ones, or is larger than allowed (413)."""
    require_keys(config)
    check_storage_keys(config, settings)
    bundle = names_bundle(config, storage, settings)
    if not config.reference_data and (not bundle or config.full_recompute):
        raise ConfigError(
            "missing required key 'reference_data': give the storage key of the reference .h5ad, or a reference "
            "bundle as 'ref_path' (built with `scarches-api build-reference`)",
            details={"keys": ["reference_data"]},
        )
    for name, key in input_keys(config, bundle=bundle).items():
        try:
            found = storage.exists(key)
        except ScarchesError as exc:
            raise _named(exc, name, key) from None
        if not found:
            raise NotFoundError(
                f"{name}: key {key!r} not found in {storage.describe()}", details={"key": name, "value": key}
            )
        check_object_size(key, object_size(storage, key), settings)


def _named(exc: ScarchesError, name: str, key: str) -> ScarchesError:
    """The same error, its message starting with the configuration key it concerns."""
    return type(exc)(f"{name}: {exc.message}", details={**exc.details, "key": name, "value": key})


# --- the job ------------------------------------------------------------------------------------------------------
def internal_error(context: str) -> dict[str, Any]:
    """Log the current exception with a fresh error id; return the error record that names only the id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s [error_id=%s]", context, error_id)
    return {"error": "internal error", "kind": "internal", "error_id": error_id, "status_code": 500}


def _map(
    job_id: str, config: QueryConfig, store: ProgressSink, storage: Storage, settings: Settings, work_dir: Path
) -> dict[str, Any]:
    from scarches_api.mapping import run_mapping  # torch and scvi-tools: loaded by the process that maps, when it maps

    inputs = work_dir / "inputs"

    def report(stage: str, info: dict[str, Any]) -> None:
        try:
            if stage == "epoch":
                store.progress(job_id, epoch=info.get("epoch"), epochs=info.get("epochs"))
            else:
                # Epochs count per training stage; after training they stay, showing how the last one ended.
                store.progress(job_id, stage, reset_epochs=stage in TRAINING_STAGES)
        except JobInterrupted:  # cancelled, or taken for lost: the attempt stops here (jobs/tasks.py)
            raise
        except Exception:  # progress is for watching; it must not stop the mapping
            log.warning("job %s: could not record progress %s", job_id, stage, exc_info=True)

    report("fetch", {})
    cache = reference_cache(settings)
    bundle = cache.bundle(storage, config.ref_path) if names_bundle(config, storage, settings) else None
    local: dict[str, Path] = {}
    for name, key in input_keys(config, bundle=bundle is not None).items():
        try:
            if name == "ref_path":
                if bundle is None:
                    local[name] = cache.model(storage, key)
            else:
                # The key's own file name, so that messages about the file name what the caller sent.
                local[name] = storage.fetch(key, inputs / name / (PurePosixPath(key).name or f"{name}.h5ad"))
                if input_format(local[name]) == "h5ad":
                    # Only the HDF5 metadata is read: an oversized or truncated file is refused before loading.
                    role = "reference" if name == "reference_data" else "query"
                    check_shape(*h5ad_shape(local[name], role=role), role, settings)
        except ScarchesError as exc:
            raise _named(exc, name, key) from None
    # The separator follows the output key's extension; the local name only has to carry it.
    suffix = ".csv" if str(config.output_path).lower().endswith(".csv") else ".tsv"
    mapping = run_mapping(
        config,
        reference=local.get("reference_data"),
        query=local["query_data"],
        bundle=bundle,
        output=work_dir / "output" / f"result{suffix}",
        ref_model=local.get("ref_path"),
        model_out=work_dir / "model" if config.model_path else None,
        progress=report,
    )
    report("publish", {})
    locations: dict[str, Any] = {}
    # Model first, table last: the caller takes the table's appearance as the sign that everything is there.
    if config.model_path and mapping.model_dir is not None:
        locations["model"] = storage.publish_tree(mapping.model_dir, config.model_path)
    output_key = PurePosixPath(str(config.output_path))
    for name, path in mapping.reports.items():
        # Beside the table, named after it: cells.tsv → cells.report.json, cells.report.html, cells.manifest.json.
        suffix = path.name.split(".", 1)[1]  # "report.json" of "result.report.json"
        locations[name] = storage.publish(path, str(output_key.with_name(f"{output_key.stem}.{suffix}")))
    locations["output"] = storage.publish(mapping.output, str(config.output_path))
    return {
        "output_path": config.output_path,
        "model_path": config.model_path,
        "locations": locations,
        "summary": mapping.summary,
        "timings": mapping.timings,
        # Objects this process has downloaded so far: a query against a cached reference adds only its own input.
        "downloads": storage.downloads,
    }


# --- telling the caller -------------------------------------------------------------------------------------------
def webhook_payload(job: Job) -> dict[str, Any]:
    """The used configuration plus the job's id, status, result keys and error (the original posted the config)."""
    payload = dict(job.config)
    payload.update(job_id=job.id, status=job.status.value, result=job.result, error=job.error)
    payload.update(created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)
    return payload


def notify(job_id: str, store: JobStore, settings: Settings) -> None:
    """Call the job's webhook, if it has one, and record how that went on the job."""
    job = store.get(job_id)
    url = job.config.get("webhook")
    if not url:
        return
    delivery = deliver(url, webhook_payload(job), settings.webhook_timeout, **webhook_options(settings))
    store.set_webhook(job_id, delivery.to_dict())


def webhook_options(settings: Settings) -> dict[str, Any]:
    """The server's webhook settings (allowlist, signing secret, attempts, backoff) for ``deliver``, where set."""
    names = {"webhook_allow": "allow", "webhook_secret": "secret", "webhook_attempts": "attempts",
             "webhook_backoff": "backoff"}
    options = {key: getattr(settings, name, None) for name, key in names.items()}
    return {
        key: value.get_secret_value() if hasattr(value, "get_secret_value") else value
        for key, value in options.items()
        if value is not None
    }
