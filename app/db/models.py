"""The ORM models: projects and API keys, data sets, jobs with their events, epoch metrics, checkpoints
and artifacts, and idempotency records. Timestamps are aware UTC datetimes; ids are prefixed ULIDs.

These are not the API's schemas (``app.schemas``): they hold what is stored, the schemas what is shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db.base import Base
from app.statuses import DatasetStatus, ExportStatus, JobStatus, SweepStatus

ID = String(40)


def _one_of(column: str, values: type[DatasetStatus] | type[JobStatus] | type[ExportStatus] | type[SweepStatus]) -> str:
    return f"{column} IN ({', '.join(repr(str(value)) for value in values)})"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Limits of this project alone; NULL: the settings' FT_PROJECT_MAX_* (app.dispatch.admission).
    max_running_jobs: Mapped[int | None]
    max_queued_jobs: Mapped[int | None]
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    """A key is shown once; only its sha256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))  # enough to tell keys apart in a listing
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: until revoked

    project: Mapped[Project] = relationship(lazy="joined")


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(_one_of("status", DatasetStatus), name="status"),
        Index(None, "project_id", "id"),  # the list, newest first
        Index(None, "project_id", "status", "id"),
        Index(None, "sha256"),  # an archive is stored once: the upload of the same bytes finds it
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    store_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    class_names: Mapped[list[str] | None] = mapped_column(JSON)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # split -> class name -> images
    num_images: Mapped[int | None]
    skipped_files: Mapped[list[str] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_reasons: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    validated_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    validation_attempts: Mapped[int] = mapped_column(default=0, server_default="0")  # tasks that started on it
    validation_sent_at: Mapped[datetime | None]  # when its validation task was last sent


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_one_of("status", JobStatus), name="status"),
        Index(None, "project_id", "id"),
        Index(None, "project_id", "status", "id"),
        Index(None, "project_id", "dataset_id", "id"),
        Index(None, "project_id", "created_at"),
        Index(None, "status", "lease_expires_at"),  # the reaper's scan
        Index(None, "status", "dispatched_at"),  # the sweep for jobs whose task never reached the broker
        Index(None, "dataset_id", "status"),  # may a data set be deleted?
        Index(None, "sweep_id", "status"),  # a sweep's trials, and those still active
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the resolved spec: what runs
    init_from: Mapped[str | None] = mapped_column(ID)  # ftjob_... or ckpt_... when the spec starts from one
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # [{type: mlflow, mlflow: {...}}]
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"))  # a sweep's trial
    sweep_trial: Mapped[int | None] = mapped_column(Integer)  # its Optuna trial number in the sweep's study
    status: Mapped[str] = mapped_column(String(16))
    # The state machine's bookkeeping (app.services.job_state).
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims so far; the running one is `attempt`
    max_attempts: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(100))  # the claiming worker's token
    lease_expires_at: Mapped[datetime | None]
    event_seq: Mapped[int] = mapped_column(Integer, default=0)  # the seq of the last event appended
    # When the broker took this job's train task; NULL while queued and not yet sent (app.dispatch.sweep).
    dispatched_at: Mapped[datetime | None]
    # When a dispatch pass chose this job and queued its send; with dispatched_at still NULL, the send is in
    # flight (counted against the project's running limit) until redispatch_after_seconds have passed.
    dispatch_requested_at: Mapped[datetime | None]
    # Progress and results, written by the worker through app.services.job_records.
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    total_epochs: Mapped[int] = mapped_column(Integer)
    attempt_start_epoch: Mapped[int] = mapped_column(Integer, default=0)  # for the ETA of a resumed run
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    best_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]  # the first claim
    attempt_started_at: Mapped[datetime | None]  # the current attempt's claim
    cancel_requested_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    metadata_items: Mapped[list[JobMetadata]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="JobMetadata.key"
    )
    artifacts: Mapped[list[Artifact]] = relationship(lazy="selectin", order_by="Artifact.name")

    @property
    def metadata_dict(self) -> dict[str, str]:
        return {item.key: item.value for item in self.metadata_items}

    @property
    def artifact_names(self) -> list[str]:
        return [artifact.name for artifact in self.artifacts]


class Sweep(Base):
    """A hyperparameter search: its trials are ordinary jobs (``jobs.sweep_id``); the sampling and pruning
    state is Optuna's study of the same name, kept apart from these tables (``app.sweeps.study``)."""

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(_one_of("status", SweepStatus), name="status"),
        Index(None, "project_id", "id"),
        Index(None, "status"),  # the periodic sweep advances the running ones
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted: a trial sets its values in it
    space: Mapped[dict[str, Any]] = mapped_column(JSON)  # spec path -> {kind: values}
    algorithm: Mapped[str] = mapped_column(String(16))  # grid | random | tpe
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)  # {metric, mode}
    max_trials: Mapped[int] = mapped_column(Integer)
    max_parallel: Mapped[int] = mapped_column(Integer)
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {type: asha|median, ...} or None
    seed: Mapped[int] = mapped_column(Integer)  # the sampler's, so a sweep's draws can be replayed
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class JobMetadata(Base):
    """A job's metadata as rows, so ``metadata[key]=value`` filters use an index on every backend."""

    __tablename__ = "job_metadata"
    __table_args__ = (Index(None, "key", "value"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index(None, "job_id", "type", "seq"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, 3... per job, in the order appended
    type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EpochMetrics(Base):
    """One row per completed epoch, kept forever (the Redis stream is bounded; this is the record)."""

    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based, as the engine counts
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "step"),
        Index(None, "job_id", "id"),
        Index(None, "project_id", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)  # completed epochs
    step: Mapped[int] = mapped_column(Integer)  # optimizer steps since the start of the run
    mid_epoch: Mapped[bool] = mapped_column(Boolean, default=False)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    store_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]  # removed by the retention rule; the row stays for the record


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))  # what downloads call it: model.safetensors, model.json...
    store_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobExport(Base):
    """An export of a succeeded job's weights (ONNX, TorchScript), made by a task on the light queue; one per
    job and format: a new request for a format replaces the last (``app.services.exports``)."""

    __tablename__ = "job_exports"
    __table_args__ = (
        UniqueConstraint("job_id", "format"),
        CheckConstraint(_one_of("status", ExportStatus), name="status"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(16))
    dynamic_batch: Mapped[bool] = mapped_column(Boolean)
    opset: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    parity: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the card's entry for the export, once made
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """A create that an Idempotency-Key made: the same key and body answer with the same object."""

    __tablename__ = "idempotency_records"
    __table_args__ = (Index(None, "expires_at"),)

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # the endpoint: "jobs.create"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(ID)
    status_code: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class WebhookEndpoint(Base):
    """Where a project's job events are sent. The signing secret is kept as it was shown (a receiver needs the
    same bytes to verify): it is a credential of the receiver's, like the URL, not a password of ours."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index(None, "project_id", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)  # job.queued, job.succeeded...
    description: Mapped[str] = mapped_column(String(500), default="")
    secret: Mapped[str] = mapped_column(String(100))  # whsec_ + base64 of 32 random bytes
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one message to one endpoint, written in the transaction of the status change it reports.
    Its id is the ``webhook-id`` of every attempt, so a receiver can deduplicate retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "endpoint_id", "id"),  # an endpoint's deliveries, newest first
        Index(None, "status", "next_attempt_at"),  # the sweep for due deliveries
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ID)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the body, fixed when the event happened
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    redelivered_at: Mapped[datetime | None]  # asked again by hand: one attempt, no automatic retries after it
    next_attempt_at: Mapped[datetime | None]  # NULL once delivered or given up
    # When a delivery task was last sent for the due attempt; NULL: not yet (the sweep sends it).
    dispatched_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]  # an attempt under way: no second worker takes it meanwhile
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One try at sending a delivery: what the receiver answered (or why nothing came back), and how fast."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # 1, 2, 3... per delivery
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
