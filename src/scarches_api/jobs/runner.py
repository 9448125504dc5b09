"""Running one job, the same way for sync requests and background jobs (and, later, a Celery task).

fetch inputs → run_mapping (stages reported on the job) → publish model, then table → record done/failed →
webhook (always, when configured) → remove the work dir (kept when ``debug``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from scarches_api.config import QueryConfig, Settings
from scarches_api.errors import ConfigError, NotFoundError, ScarchesError
from scarches_api.io.cache import ReferenceCache, shared_cache
from scarches_api.io.storage import Storage
from scarches_api.jobs.models import Job, JobStatus
from scarches_api.jobs.store import JobStore
from scarches_api.mapping import run_mapping
from scarches_api.webhooks import deliver

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("query_data", "output_path")
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
    """Fail before queueing when a key is missing from the configuration or from the storage (404 naming it)."""
    require_keys(config)
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


def _named(exc: ScarchesError, name: str, key: str) -> ScarchesError:
    """The same error, its message starting with the configuration key it concerns."""
    return type(exc)(f"{name}: {exc.message}", details={**exc.details, "key": name, "value": key})


# --- the job ------------------------------------------------------------------------------------------------------
def perform_job(job_id: str, store: JobStore, storage: Storage, settings: Settings) -> Job:
    """Run a queued job to its end and return its final record; failures are recorded, never raised."""
    job = store.get(job_id)
    config = QueryConfig.model_validate(job.config)
    work_dir = Path(settings.work_dir) / job_id
    store.start(job_id)
    status, result, error = JobStatus.FAILED, None, None
    try:
        result = _map(job_id, config, store, storage, settings, work_dir)
        status = JobStatus.DONE
    except ScarchesError as exc:
        log.warning("job %s failed: %s", job_id, exc.message)
        error = {**exc.to_dict(), "status_code": exc.status_code}
    except Exception:
        error = internal_error(f"job {job_id} failed unexpectedly")
    try:
        store.finish(job_id, status, result=result, error=error)
        notify(job_id, store, settings)
    finally:
        if config.debug:
            log.info("job %s: debug is on, keeping its work dir %s", job_id, work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return store.get(job_id)


def internal_error(context: str) -> dict[str, Any]:
    """Log the current exception with a fresh error id; return the error record that names only the id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s [error_id=%s]", context, error_id)
    return {"error": "internal error", "kind": "internal", "error_id": error_id, "status_code": 500}


def _map(
    job_id: str, config: QueryConfig, store: JobStore, storage: Storage, settings: Settings, work_dir: Path
) -> dict[str, Any]:
    inputs = work_dir / "inputs"

    def report(stage: str, info: dict[str, Any]) -> None:
        try:
            if stage == "epoch":
                store.progress(job_id, epoch=info.get("epoch"), epochs=info.get("epochs"))
            else:
                # Epochs count per training stage; after training they stay, showing how the last one ended.
                store.progress(job_id, stage, reset_epochs=stage in TRAINING_STAGES)
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
    delivery = deliver(url, webhook_payload(job), settings.webhook_timeout)
    store.set_webhook(job_id, delivery.to_dict())


def abandon_job(job_id: str, store: JobStore, settings: Settings, reason: str) -> None:
    """Fail a job that will never run (the service stopped first), and tell the caller."""
    store.finish(job_id, JobStatus.FAILED, error={"error": reason, "kind": "interrupted", "status_code": 503})
    notify(job_id, store, settings)


# --- background execution -----------------------------------------------------------------------------------------
class BackgroundRunner:
    """Runs async jobs on a small thread pool; one job at a time per worker by default (training is CPU-bound)."""

    def __init__(self, store: JobStore, storage: Storage, settings: Settings, *, max_workers: int = 1) -> None:
        self.store, self.storage, self.settings = store, storage, settings
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="scarches-job")
        self._futures: dict[str, Future[Job]] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> Future[Job]:
        future = self._pool.submit(perform_job, job_id, self.store, self.storage, self.settings)
        with self._lock:
            self._futures[job_id] = future
        future.add_done_callback(lambda _f: self._forget(job_id))
        return future

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop taking jobs; queued ones are failed (and their webhooks called) rather than left queued forever."""
        with self._lock:
            pending = dict(self._futures)
        for job_id, future in pending.items():
            if future.cancel():
                try:
                    reason = "the service stopped before this job started; submit it again"
                    abandon_job(job_id, self.store, self.settings, reason)
                except Exception:
                    log.exception("could not mark job %s as abandoned", job_id)
        self._pool.shutdown(wait=wait, cancel_futures=True)
