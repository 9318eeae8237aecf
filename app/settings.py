"""The service's settings, from the environment (prefix ``FT_``).

Embedded defaults need no server: a SQLite file, an artifact folder and a file-based broker, all under
``FT_HOME``. Production sets ``FT_DATABASE_URL`` (PostgreSQL), ``FT_BROKER_URL`` and ``FT_REDIS_URL``
(Redis, separate database numbers). Nothing here is read at import time: ``get_settings`` builds them on
first use, and the app takes them through a dependency.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from training.settings import EngineSettings

log = logging.getLogger(__name__)

GIB = 1 << 30


class Settings(BaseSettings):
    """Every switch of the service. Paths left unset are derived from ``home``."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    home: Path = Field(
        Path(".finetune"), description="The folder that holds the embedded database, artifacts and broker."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default: the SQLite file $FT_HOME/finetune.db. "
        "postgresql+psycopg://... in production.",
    )
    artifacts_dir: Path | None = Field(None, description="The local artifact store; default: $FT_HOME/artifacts.")
    store_url: str | None = Field(
        None,
        description="Where artifacts, checkpoints and uploaded data sets live: file:///path (a folder; "
        "default: file://$FT_ARTIFACTS_DIR) or s3://bucket/prefix (an S3-compatible object store; "
        "what workers on hosts that share no folder need).",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="The S3 API's URL for a store that is not AWS (http://seaweedfs:8333); default: "
        "AWS_ENDPOINT_URL, else AWS S3.",
    )
    s3_region: str | None = Field(None, description="The bucket's region; default: AWS_REGION / AWS_DEFAULT_REGION.")
    s3_access_key_id: str | None = Field(
        None, description="S3 credentials; default: AWS's own chain (AWS_ACCESS_KEY_ID, profiles, instance roles)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="The secret of FT_S3_ACCESS_KEY_ID.")
    s3_part_bytes: int = Field(
        8 << 20,
        ge=5 << 20,
        description="Size of the parts of S3 multipart uploads and ranged downloads (at most 5 in memory a transfer).",
    )
    abandoned_write_hours: float = Field(
        24.0,
        gt=0,
        description="Writes to the store left unfinished this long by a process killed mid-write are undone "
        "(S3: its multipart uploads under the store's prefix, open since, aborted; a folder: the temporary "
        "files not written to since, removed); the API checks once an hour.",
    )
    download_redirect: bool = Field(
        False,
        description="Downloads answer 302 to a short-lived presigned URL of the object store instead of "
        "streaming through the API (an s3:// store only).",
    )
    download_url_seconds: int = Field(300, ge=1, le=7 * 24 * 3600, description="How long a presigned URL lasts.")
    cache_dir: Path | None = Field(
        None,
        description="A worker's cache of data set archives and init_from weights fetched from an s3:// store; "
        "default: $FT_HOME/cache.",
    )
    cache_max_bytes: int = Field(
        20 * GIB, ge=0, description="The cache's size: least recently used files go first past it."
    )
    data_dir: Path | None = Field(
        None, description="Where uploaded data sets are extracted and validated; default: $FT_HOME/data."
    )
    dataset_cache_max_bytes: int = Field(
        50 * GIB,
        ge=0,
        description="Extracted data sets a worker keeps on its disk (under data_dir): past it, the least recently "
        "used that no job is training from are removed, and extracted again when a job needs them.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker; default: kombu's serverless filesystem transport under $FT_HOME/broker."
    )
    broker_key_prefix: str = Field(
        "", description="Prefix of every broker key in Redis (a Redis shared by deployments)."
    )
    redis_url: str | None = Field(
        None, description="Redis for live event streams (a database apart from the broker's)."
    )
    auth_enabled: bool | None = Field(
        None,
        description="Require API keys. Default: on when FT_DATABASE_URL is set (production), off in embedded mode.",
    )
    default_project: str = Field("default", description="The project every request acts as while auth is off.")
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="Seconds an API process remembers which project an API key acts for, sparing a database "
        "query a request: a revoked key keeps working at most this long in a process that saw it (0: never "
        "remembered). An expired key stops at its expiry regardless.",
    )
    max_upload_bytes: int = Field(10 * GIB, ge=1, description="Largest data set archive accepted by POST /v1/datasets.")
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Host folders a spec submitted over HTTP may name in data.path or backbone.init_from "
        "(comma-separated). Empty: none.",
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Attempts a job gets before a lost worker fails it (worker_lost)."
    )
    task_expiry_seconds: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="A queued task message not picked up within this time is dropped by the broker.",
    )
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1, description="How long an Idempotency-Key is remembered.")
    lease_seconds: float = Field(
        30.0, gt=0, description="A running job's lease: a worker silent this long is presumed lost."
    )
    lease_renew_seconds: float = Field(5.0, gt=0, description="How often a worker renews its job's lease.")
    cancel_poll_seconds: float = Field(
        0.5, gt=0, description="How often a worker looks for a cancel of its job (a stop takes about this long)."
    )
    redispatch_after_seconds: float = Field(
        15.0,
        gt=0,
        description="A queued job with no record of its task reaching the broker is re-sent after this long "
        "(a broker outage at submission; a job handed back by a worker that was shutting down).",
    )
    project_max_running_jobs: int = Field(
        4,
        ge=1,
        description="Most jobs of one project running at once (counting those handed to the broker); the rest "
        "wait, queued, and are dispatched fairly across projects as slots free up. Per project: "
        "projects.max_running_jobs.",
    )
    project_max_queued_jobs: int = Field(
        100,
        ge=1,
        description="Most jobs of one project waiting to run (queued); past it, a submission is refused "
        "with 429 (limit queued_jobs). Per project: projects.max_queued_jobs.",
    )
    project_max_stored_bytes: int = Field(
        1024 * GIB,
        ge=1,
        description="Most bytes one project may store (data set archives, checkpoints, artifacts); past it, "
        "an upload or a submission is refused with 429 (limit stored_bytes). Per project: "
        "projects.max_stored_bytes.",
    )
    db_connect_timeout_seconds: int = Field(
        10, ge=1, description="PostgreSQL: how long opening a connection may take before it fails."
    )
    db_statement_timeout_seconds: float = Field(
        60.0, gt=0, description="PostgreSQL: the longest a statement may run before the server cancels it."
    )
    db_keepalive_seconds: int = Field(
        10,
        ge=1,
        description="PostgreSQL: TCP keepalives after this long idle, then every this long, 3 unanswered "
        "probes end the connection (a dead peer is noticed instead of hanging a worker's lease keeper).",
    )
    db_outage_grace_seconds: float = Field(
        300.0,
        gt=0,
        description="A running job survives a database outage this long: its worker keeps training, buffers "
        "its events and retries its lease; past it, the worker stops and the job is requeued.",
    )
    sweep_interval_seconds: float = Field(
        5.0, gt=0, description="How often the API requeues lost jobs and re-sends undelivered tasks."
    )
    work_dir: Path | None = Field(
        None, description="A worker's scratch folder for running jobs; default: $FT_HOME/work."
    )
    log_format: Literal["json", "text"] | None = Field(
        None,
        description="Log lines: json (one object per line, for a log pipeline) or text (for a terminal). "
        "Default: json when FT_DATABASE_URL is set (production), text in embedded mode.",
    )
    worker_devices: int | None = Field(
        None,
        ge=1,
        description="Devices a worker on a host without GPUs advertises (`finetune worker`): training processes "
        "the host runs at once across its jobs (device slots). Unset: not counted on such a host. GPU hosts "
        "advertise their GPUs.",
    )
    worker_heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a worker records its heartbeat; three missed beats count it as down."
    )
    max_request_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest request body of every route but the data set upload, counted as it streams in "
        "(before parsing or authentication); past it: 413.",
    )
    max_epochs: int = Field(1000, ge=1, description="Most training.epochs a spec may ask for.")
    max_runtime_seconds: int = Field(
        7 * 24 * 3600, ge=1, description="Largest training.max_runtime a spec may ask for, in seconds."
    )
    max_total_steps: int = Field(
        1_000_000, ge=1, description="Most optimizer steps a run may plan (epochs x steps per epoch, or max_steps)."
    )
    api_processes: int | None = Field(
        None,
        ge=1,
        description="API processes `finetune serve` runs (uvicorn workers) on one port. Default: one per CPU core, "
        "at most 8, in production; 1 in the embedded mode. Each keeps its own db_pool_size connections.",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry spans and metrics of each request, sent to the providers the "
        "process has (configured by `opentelemetry-instrument`, say). Off, FastAPI does not look for a provider "
        "on each request (a tenth of a polled GET's CPU).",
    )
    db_pool_size: int | None = Field(
        None,
        ge=1,
        description="Database connections each process keeps open; the API lets this many requests use the "
        "database at once (a request holds one connection) and queues the rest, so none opens one of its own. "
        "Default: 20 on PostgreSQL; 8 on SQLite (the embedded mode), which works in the API's own process, where "
        "more threads at once only contend for it.",
    )
    db_read_pool_size: int = Field(
        4,
        ge=0,
        description="PostgreSQL connections each API process keeps, besides db_pool_size, for the polled reads "
        "(GET /v1/jobs/{id}, GET /v1/jobs), awaited on the event loop rather than in a thread. 0: those reads use the "
        "main pool from a thread, as every other request does.",
    )
    dry_run_threads: int = Field(2, ge=1, description="Threads of the dry-run executor (apart from other routes').")
    dry_run_timeout_seconds: float = Field(
        20.0, gt=0, description="A dry run not planned within this time is answered 503 dry_run_timeout."
    )
    validation_memory_mb: int = Field(
        2048,
        ge=64,
        description="Memory (address space) the child process that extracts and checks an upload may take "
        "beyond its own start-up (about 135 MiB) and its decode threads' stacks; past it the data set ends "
        "failed, validation_crashed.",
    )
    validation_timeout_seconds: float = Field(
        1800.0, gt=0, description="Time limit of the child process that extracts and checks an upload."
    )
    validation_max_attempts: int = Field(
        3, ge=1, description="Validations of one data set that may die (a lost worker) before it ends failed."
    )
    max_streams_per_process: int = Field(
        200, ge=1, description="Open event streams (SSE) one API process serves; past it: 429."
    )
    max_streams_per_project: int = Field(
        50, ge=1, description="Open event streams (SSE) one project (API key) may hold in one API process."
    )
    metrics_token: str | None = Field(
        None,
        description="A bearer token /metrics requires. Unset: /metrics answers only requests from the "
        "loopback address (a Prometheus beside the server, or a sidecar).",
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Host header values the API answers (comma-separated names, '*' for any). Default: "
        "localhost, 127.0.0.1 and ::1 in embedded mode (no DNS rebinding onto a laptop), any in production.",
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0],
        description="Seconds to wait before each retry of a webhook delivery (comma-separated; each with +-20% "
        "jitter); past the last one the delivery is given up. Default: 5 s doubling-ish up to 12 h, about a day "
        "in all.",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a webhook receiver has to answer one delivery attempt."
    )
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated) a webhook URL may reach although they are loopback, "
        "private, link-local or reserved (e.g. 10.0.0.0/8 for an internal receiver). Empty: public addresses only.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="The MLflow tracking server jobs with an mlflow integration log to (credentials: MLflow's own "
        "MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the workers' environment). Unset: such "
        "jobs are refused.",
    )
    engine: EngineSettings = Field(default_factory=EngineSettings, description="The training engine's limits (FT_...).")

    @field_validator("store_url", "s3_endpoint_url", "s3_region", "s3_access_key_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # VAR= in a .env file

    @field_validator("allowed_data_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _resolve_weight_downloads(self) -> Settings:
        """Pretrained weights download on demand in the embedded mode, as torchvision does; production says."""
        if self.engine.allow_weight_downloads is None:
            self.engine = self.engine.model_copy(update={"allow_weight_downloads": self.is_embedded})
        return self

    @field_validator("webhook_retry_schedule", "webhook_allowed_networks", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every retry delay must be a positive number of seconds")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad one
        return value

    @property
    def is_embedded(self) -> bool:
        """No database server configured: the laptop mode."""
        return self.database_url is None

    @property
    def host_allowlist(self) -> list[str]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return ["localhost", "127.0.0.1", "::1"] if self.is_embedded else ["*"]

    @property
    def api_process_count(self) -> int:
        if self.api_processes is not None:
            return self.api_processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return 1 if self.is_embedded else max(1, min(cores, 8))

    @property
    def db_connections(self) -> int:
        """``db_pool_size``, or its default for the database in use."""
        if self.db_pool_size is not None:
            return self.db_pool_size
        return 8 if self.sqlalchemy_url.startswith("sqlite") else 20

    @property
    def logs_as(self) -> Literal["json", "text"]:
        return self.log_format or ("text" if self.is_embedded else "json")

    @property
    def auth_required(self) -> bool:
        return self.auth_enabled if self.auth_enabled is not None else not self.is_embedded

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+pysqlite:///{(self.home / 'finetune.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()

    @property
    def store_location(self) -> str:
        return self.store_url or self.artifacts_path.as_uri()

    @property
    def cache_path(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()

    @property
    def data_path(self) -> Path:
        return (self.data_dir or self.home / "data").resolve()

    @property
    def work_path(self) -> Path:
        return (self.work_dir or self.home / "work").resolve()

    @property
    def broker_path(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def warn_if_open(self) -> None:
        """Log loudly when anyone who reaches the port acts as the default project."""
        if not self.auth_required:
            log.warning(
                "AUTH IS OFF: every request acts as project %r without an API key. "
                "Set FT_AUTH_ENABLED=true before exposing this server to a network.",
                self.default_project,
            )


@cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
