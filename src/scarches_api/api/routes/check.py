"""POST /check: the pre-flight report for a /query body, in seconds, without training."""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from scarches_api.api.deps import SettingsDep, StorageDep
from scarches_api.api.routes.query import _OPENAPI_BODY, parse_body
from scarches_api.config import QueryConfig, Settings, build_config
from scarches_api.io.storage import Storage
from scarches_api.jobs.runner import check_job_inputs, names_bundle, reference_cache

router = APIRouter(tags=["query"])


def preflight_report(config: QueryConfig, storage: Storage, settings: Settings) -> dict[str, Any]:
    """Fetch the inputs a /query with this config would read and run the pre-flight on them."""
    from scarches_api.preflight import preflight

    check_job_inputs(config, storage, settings)
    with tempfile.TemporaryDirectory(dir=_scratch(settings)) as tmp:
        query = storage.fetch(config.query_data, Path(tmp) / (PurePosixPath(config.query_data).name or "query.h5ad"))
        if names_bundle(config, storage, settings) and not config.full_recompute:
            bundle = reference_cache(settings).bundle(storage, config.ref_path)
            report = preflight(config, query=query, reference_genes=bundle.metadata["var_names"],
                               reference_obs=bundle.obs, protein_names=bundle.metadata.get("protein_names"))
        else:
            name = PurePosixPath(config.reference_data).name or "reference.h5ad"
            reference = storage.fetch(config.reference_data, Path(tmp) / "reference" / name)
            report = preflight(config, query=query, reference=reference)
    return report.to_dict()


def _scratch(settings: Settings) -> Path:
    Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    return Path(settings.work_dir)


@router.post("/check", openapi_extra=_OPENAPI_BODY)
async def check(request: Request, settings: SettingsDep, storage: StorageDep) -> dict[str, Any]:
    """Pre-flight a /query body: data shape, gene IDs and overlap, counts, keys, cost estimate and a verdict."""
    config = build_config(parse_body(await request.body()))
    return await run_in_threadpool(preflight_report, config, storage, settings)
