"""Configuration as data: one pydantic model for a query's config, one Settings for the server.

Every field carries a default and a one-line help text (with its unit) that feeds the CLI, the OpenAPI
schema and the README; ``tests/test_config.py`` checks that every field is documented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scarches_api.catalogue import atlas_entry
from scarches_api.errors import ConfigError

ModelName = Literal["scVI", "scANVI", "totalVI"]
_MODEL_ALIASES = {name.lower(): name for name in ("scVI", "scANVI", "totalVI")}


class QueryConfig(BaseModel):
    """A mapping job's configuration: the original service's keys, merged over these defaults."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    # --- what to map, and where the data lives (S3 keys, s3:// URIs or local paths) ---
    model: ModelName = Field("scVI", description="Model to map with: scVI, scANVI or totalVI.")
    atlas: str | None = Field(
        None,
        description="Atlas name from the catalogue; its keys (condition, cell type, unlabeled) become the defaults.",
    )
    reference_data: str | None = Field(None, description="Key of the reference .h5ad (raw counts).")
    query_data: str | None = Field(None, description="Key of the query .h5ad (raw counts).")
    ref_path: str | None = Field(
        None, description="Key of a pretrained reference model (a model.pt file or a folder holding one)."
    )
    full_recompute: bool = Field(
        False,
        description="Recompute the reference's latent space and a joint UMAP from reference_data even when ref_path "
        "names a reference bundle (the original's algorithm; slower).",
    )
    output_path: str | None = Field(
        None, description="Key the per-cell table is written to; .csv gives commas, anything else tabs."
    )
    model_path: str | None = Field(
        None, description="Key the fine-tuned model is written to (a model.pt file, or a folder when no .pt suffix)."
    )
    webhook: str | None = Field(None, description="URL that gets a POST with the used configuration when the job ends.")
    debug: bool = Field(False, description="Log at debug level and keep intermediate files of the job.")
    async_: bool = Field(False, alias="async", description="Answer at once with a job id and run in the background.")

    # --- data layout ---
    condition_key: str = Field("study", description="obs column holding the batch (condition) of each cell.")
    cell_type_key: str = Field("cell_type", description="obs column holding the reference's cell-type labels.")
    unlabeled_key: str = Field("Unknown", description="Label value meaning 'no label' (used for query cells).")
    cell_type_keys: list[str] = Field(
        default_factory=list,
        description="Further reference label columns (other levels, e.g. coarse); each gets cell_type:<key> and "
        "uncertainty:<key> columns.",
    )
    protein_key: str = Field(
        "protein_expression",
        description="totalVI: obsm key of protein counts; else var features whose feature_types is 'Antibody Capture'.",
    )
    min_gene_overlap: float = Field(
        0.5, ge=0.0, le=1.0, description="Smallest share (0..1) of reference genes the query must have."
    )

    # --- architecture (the scArches surgery settings) ---
    n_layers: int = Field(2, ge=1, description="Hidden layers in encoder and decoder.")
    n_latent: int = Field(10, ge=2, description="Dimensions of the latent space.")
    encode_covariates: bool = Field(True, description="Feed the batch to the encoder (needed for surgery).")
    deeply_inject_covariates: bool = Field(False, description="Feed the batch to every hidden layer.")
    use_layer_norm: Literal["encoder", "decoder", "none", "both"] = Field(
        "both", description="Where to use layer normalisation."
    )
    use_batch_norm: Literal["encoder", "decoder", "none", "both"] = Field(
        "none", description="Where to use batch normalisation."
    )

    # --- training (epochs are full passes over the data) ---
    scvi_max_epochs: int = Field(400, ge=1, description="Epochs to train the scVI reference model.")
    scvi_max_epochs_query: int = Field(200, ge=1, description="Epochs to fine-tune scVI on the query.")
    scanvi_max_epochs: int = Field(20, ge=1, description="Epochs to train the scANVI reference model.")
    scanvi_max_epochs_query: int = Field(100, ge=1, description="Epochs to fine-tune scANVI on the query.")
    totalvi_max_epochs_1: int = Field(400, ge=1, description="Epochs to train the totalVI reference model.")
    totalvi_max_epochs_2: int = Field(200, ge=1, description="Epochs to fine-tune totalVI on the query.")
    max_epochs: int = Field(100, ge=1, description="Epoch cap kept for the original contract (unused by the models).")
    batch_size: int = Field(128, ge=8, description="Cells per training minibatch.")
    early_stopping: bool = Field(
        True,
        description="Stop query training once the ELBO on 10% held-out query cells stops improving (reference training "
        "always runs its epochs).",
    )
    early_stopping_patience: int = Field(
        5, ge=1, description="Epochs without improvement of the held-out ELBO before query training stops."
    )
    seed: int = Field(0, description="Random seed for training, label transfer and the embedding.")
    use_gpu: bool = Field(False, description="Train on a GPU when one is present.")
    pre_trained_scVI: bool = Field(True, description="Use the scVI model at ref_path when given, else train one.")
    pre_trained_scANVI: bool = Field(True, description="Use the scANVI model at ref_path when given, else train one.")
    pre_trained_totalVI: bool = Field(True, description="Use the totalVI model at ref_path when given, else train one.")

    # --- label transfer and embedding ---
    n_neighbors: int = Field(8, ge=2, description="Neighbours in the graph the 2-D UMAP embedding is built from.")
    knn_neighbors: int = Field(15, ge=1, description="Reference neighbours voting on a query cell's label (kNN).")
    unknown_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="A query cell whose label uncertainty (0..1) is above this is labelled unlabeled_key; null: never.",
    )
    query_chunk_cells: int = Field(
        50_000,
        ge=1,
        description="A query .h5ad of more cells than this is read this many cells at a time, keeping only the "
        "genes the reference has (cells).",
    )
    novelty_false_rate: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Share of the reference's own cells beyond the 'novel' column's distance threshold, which is "
        "calibrated per reference on them (fraction; on liu_demo 0.05 flags 6.8% of seen-type query cells).",
    )
    novel_as_unknown: bool = Field(
        False, description="Also label query cells flagged novel (column 'novel') as unlabeled_key."
    )
    smooth_neighbors: int = Field(
        15,
        ge=0,
        description="Label probabilities are averaged over each query cell and this many nearest query cells "
        "(three passes; a soft majority vote); 0: off (cells).",
    )
    label_method: Literal["classifier", "knn", "blend"] = Field(
        "blend",
        description="scANVI: labels from its classifier, a kNN on the latent space, or the mean of both (scVI/totalVI: kNN).",
    )
    unwanted_labels: list[str] = Field(
        default_factory=lambda: ["leiden"], description="obs columns left out of the result table."
    )
    development_mode: bool = Field(
        False, alias="development-mode", description="Original contract key; accepted and recorded, changes nothing."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _canonical_model(cls, value: Any) -> Any:
        # The original matched model names case-insensitively in places ("scvi", "SCANVI").
        if isinstance(value, str):
            return _MODEL_ALIASES.get(value.lower(), value)
        return value

    def used(self) -> dict[str, Any]:
        """The used configuration, with the original key names (``async``, ``development-mode``)."""
        return self.model_dump(by_alias=True, mode="json")

    @property
    def query_epochs(self) -> int:
        return {
            "scVI": self.scvi_max_epochs_query,
            "scANVI": self.scanvi_max_epochs_query,
            "totalVI": self.totalvi_max_epochs_2,
        }[self.model]


def build_config(user: dict[str, Any] | None = None, **overrides: Any) -> QueryConfig:
    """Merge a user's config over the atlas entry (if any) and the defaults.

    Raises ConfigError naming the first offending key for unknown keys and wrong types.
    """
    if user is not None and not isinstance(user, dict):
        raise ConfigError("the configuration must be a JSON object, e.g. {\"model\": \"scVI\"}")
    data: dict[str, Any] = dict(user or {})
    data.update(overrides)
    atlas = data.get("atlas")
    if atlas:
        for key, value in atlas_entry(atlas).get("config", {}).items():
            data.setdefault(key, value)
    try:
        return QueryConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a CLI ``key=value`` override; the value is read as JSON when it parses, else as a string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


class Settings(BaseSettings):
    """Server settings, read from the environment (the original service's variable names)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    workers: int = Field(3, alias="WORKERS", description="gunicorn worker processes.")
    threads: int = Field(8, alias="THREADS", description="Threads per worker.")
    port: int = Field(8080, alias="PORT", description="TCP port the service listens on.")
    host: str = Field("0.0.0.0", alias="HOST", description="Address the service binds.")
    aws_bucket: str | None = Field(None, alias="AWS_BUCKET", description="S3 bucket keys are read from and written to.")
    aws_endpoint: str | None = Field(None, alias="AWS_ENDPOINT", description="S3 endpoint URL (empty: AWS itself).")
    aws_access_key: str | None = Field(None, alias="AWS_ACCESS_KEY", description="S3 access key id.")
    aws_secret_key: str | None = Field(None, alias="AWS_SECRET_KEY", description="S3 secret access key.")
    data_dir: Path = Field(
        Path("data/store"),
        alias="SCARCHES_DATA_DIR",
        description="Local storage root used when no AWS_BUCKET is set (the embedded default).",
    )
    work_dir: Path = Field(
        Path("/tmp/scarches-api"), alias="SCARCHES_WORK_DIR", description="Scratch space for jobs' downloads."
    )
    cache_dir: Path = Field(
        Path("/tmp/scarches-api/cache"),
        alias="SCARCHES_CACHE_DIR",
        description="Local copies of reference bundles and pretrained models, keyed by their ETag (or mtime+size).",
    )
    cache_max_mb: int = Field(
        20_000, alias="SCARCHES_CACHE_MAX_MB", description="Disk the reference cache may use, in MB (LRU beyond it)."
    )
    jobs_db: Path = Field(
        Path("data/jobs.sqlite"), alias="SCARCHES_JOBS_DB", description="SQLite file holding the job records."
    )
    webhook_timeout: float = Field(30.0, alias="SCARCHES_WEBHOOK_TIMEOUT", description="Seconds to wait on a webhook.")

    # --- the job engine (Celery); see docs/deploy.md ---
    database_url: str | None = Field(
        None,
        alias="SCARCHES_DATABASE_URL",
        description="SQLAlchemy URL of the job store, e.g. postgresql+psycopg://user:pw@db/scarches for several "
        "machines; unset: the SQLite file SCARCHES_JOBS_DB.",
    )
    broker_url: str | None = Field(
        None,
        alias="SCARCHES_BROKER_URL",
        description="Celery broker of the job queue, e.g. redis://redis:6379/0; unset: the embedded filesystem broker "
        "under SCARCHES_BROKER_DIR (one machine, no server).",
    )
    broker_dir: Path | None = Field(
        None,
        alias="SCARCHES_BROKER_DIR",
        description="Folder of the embedded broker's queue files and results; unset: 'broker' next to SCARCHES_JOBS_DB.",
    )
    embedded_worker: bool | None = Field(
        None,
        alias="SCARCHES_EMBEDDED_WORKER",
        description="Run a job worker as a child process of the API; unset: yes with the embedded broker, no with "
        "SCARCHES_BROKER_URL (start `scarches-api worker` on the worker machines).",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        alias="SCARCHES_WORKER_CONCURRENCY",
        description="Jobs one worker runs at once (prefork processes); unset: one per 2 CPU cores, at least 1.",
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, alias="SCARCHES_HEARTBEAT_INTERVAL", description="Seconds between a running job's heartbeats."
    )
    stale_after: float = Field(
        60.0,
        gt=0,
        alias="SCARCHES_STALE_AFTER",
        description="Seconds without a heartbeat after which a job's worker counts as lost and the job is re-queued.",
    )
    reaper_interval: float = Field(
        5.0, gt=0, alias="SCARCHES_REAPER_INTERVAL", description="Seconds between the reaper's looks for lost jobs."
    )
    max_attempts: int = Field(
        3, ge=1, alias="SCARCHES_MAX_ATTEMPTS", description="Attempts a job gets when its worker is lost before it fails."
    )
    cancel_grace: float = Field(
        10.0,
        ge=0,
        alias="SCARCHES_CANCEL_GRACE",
        description="Seconds a cancelled running job has to stop at its next epoch or stage before its process is killed.",
    )
    visibility_timeout: int = Field(
        43_200,
        ge=60,
        alias="SCARCHES_VISIBILITY_TIMEOUT",
        description="Redis broker: seconds before an unacknowledged job is delivered again; must exceed the longest job.",
    )
    log_format: Literal["json", "text"] = Field(
        "json", alias="SCARCHES_LOG_FORMAT", description="Log lines as JSON objects (with the job id) or plain text."
    )
    api_tokens: SecretStr | None = Field(
        None,
        alias="SCARCHES_API_TOKENS",
        description="Comma-separated API tokens; when set (or SCARCHES_API_TOKENS_FILE), every endpoint but /liveness "
        "needs 'Authorization: Bearer <token>'. Unset: the API is open (fine on loopback only).",
    )
    api_tokens_file: Path | None = Field(
        None,
        alias="SCARCHES_API_TOKENS_FILE",
        description="File of API tokens, one per line ('#' comments); read at start, added to SCARCHES_API_TOKENS.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        alias="SCARCHES_WEBHOOK_SECRET",
        description="Secret that signs webhook bodies (X-Scarches-Signature: sha256=HMAC over '<timestamp>.<body>'); "
        "unset: unsigned.",
    )
    webhook_allow: str = Field(
        "",
        alias="SCARCHES_WEBHOOK_ALLOW",
        description="Comma-separated CIDRs and host names webhooks may call although not public (e.g. "
        "10.0.0.0/8,hooks.internal); all other private, loopback, link-local and metadata addresses are refused.",
    )
    webhook_attempts: int = Field(
        4, ge=1, le=10, alias="SCARCHES_WEBHOOK_ATTEMPTS", description="Tries per webhook (network errors, 5xx, 429)."
    )
    webhook_backoff: float = Field(
        0.5,
        ge=0,
        alias="SCARCHES_WEBHOOK_BACKOFF",
        description="Seconds before the first webhook retry; doubled for each next one, with ±50% jitter.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, alias="SCARCHES_MAX_BODY_BYTES", description="Largest request body accepted, in bytes (413 beyond)."
    )
    max_object_mb: int = Field(
        50_000,
        ge=0,
        alias="SCARCHES_MAX_OBJECT_MB",
        description="Largest input object (an .h5ad or model file) a job may read, in MiB (413 beyond); 0: no limit.",
    )
    max_cells: int = Field(
        2_000_000, ge=0, alias="SCARCHES_MAX_CELLS", description="Most cells in one input file (422 beyond); 0: no limit."
    )
    max_genes: int = Field(
        100_000, ge=0, alias="SCARCHES_MAX_GENES", description="Most genes in one input file (422 beyond); 0: no limit."
    )
    allowed_buckets: str = Field(
        "",
        alias="SCARCHES_ALLOWED_BUCKETS",
        description="Comma-separated S3 buckets that s3:// keys may name besides AWS_BUCKET (403 for any other).",
    )
