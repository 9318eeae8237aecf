"""Jobs, their events, epoch metrics, checkpoints and artifacts, as the API shows them.

The engine's ``Spec`` is embedded as it is: the API validates a job's spec with the model the engine runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.clock import unix_seconds, utcnow
from app.schemas.common import ListPage
from app.statuses import TERMINAL_JOB_STATUSES, EventType, JobStatus
from training.spec import Spec

if TYPE_CHECKING:  # the schemas import without SQLAlchemy: the client uses them too
    from app.db.models import Artifact as ArtifactRow
    from app.db.models import Checkpoint as CheckpointRow
    from app.db.models import EpochMetrics as EpochRow
    from app.db.models import Job as JobRow
    from app.db.models import JobEvent as EventRow
    from app.repositories.jobs import JobRecord

MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(max_length=16, description="Up to 16 pairs, for your own bookkeeping; GET /v1/jobs filters on them."),
]


def _seconds(moment: datetime | None) -> int | None:
    return unix_seconds(moment) if moment is not None else None


class MlflowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The MLflow experiment (made if missing)."
    )
    run_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="Default: the job's name, else its id."
    )
    tags: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=32)] = Field(default_factory=dict)


class MlflowIntegration(BaseModel):
    """Track the job in MLflow: the resolved spec as params, every epoch's metrics, the model card and the
    weights as artifacts, the job id as the tag ``finetune.job_id``. The server is the operator's setting."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mlflow"]
    mlflow: MlflowSettings


Integrations = Annotated[list[MlflowIntegration], Field(max_length=1, description="Where else to track the job.")]


class JobCreate(BaseModel):
    spec: Spec = Field(description="The run. Over the API, data.dataset names a ready data set (ds_...).")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    metadata: Metadata | None = None
    integrations: Integrations | None = None


class JobValidate(BaseModel):
    spec: Spec = Field(description="The run to plan; data.dataset names a ready data set (ds_...).")


class JobError(BaseModel):
    code: str = Field(description="non_finite_loss, out_of_memory, dataset_unreadable, worker_lost, timeout...")
    message: str


class JobProgress(BaseModel):
    epoch: int = Field(description="Epochs completed.")
    total_epochs: int
    fraction: float = Field(ge=0.0, le=1.0, description="Of the run completed, 0..1.")
    eta_seconds: float | None = Field(None, description="Estimated seconds to the end, while running.")


class JobMetrics(BaseModel):
    latest: dict[str, Any] | None = Field(None, description="The last epoch's metrics.")
    best: dict[str, Any] | None = Field(None, description="The best epoch's metrics, by spec.training.monitor.")
    best_epoch: int | None = None
    final: dict[str, Any] | None = Field(None, description="Validation metrics of the published weights.")
    test: dict[str, Any] | None = Field(None, description="Test-set metrics, when the data set has test/.")


class Job(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    name: str | None
    status: JobStatus
    spec: Spec = Field(description="The resolved spec, defaults filled in: what runs.")
    dataset: str | None
    metadata: dict[str, str]
    attempt: int = Field(description="Attempts started so far (a lost worker's job is retried).")
    max_attempts: int
    progress: JobProgress
    metrics: JobMetrics
    error: JobError | None
    result_artifacts: list[str] = Field(description="Names of the files the job produced (GET .../artifacts).")
    integrations: list[MlflowIntegration] = Field(default_factory=list)
    sweep_id: str | None = Field(None, description="The sweep this job is a trial of (sweep_...).")
    created_at: int
    updated_at: int
    started_at: int | None
    finished_at: int | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_row(cls, row: JobRow | JobRecord, now: datetime | None = None, spec: Spec | None = None) -> Job:
        """The job as the API shows it, from its ORM row or its record (``app.repositories.jobs.get_record``);
        ``spec``: the validated spec when the caller holds it (a record read without its stored spec).

        Built without validating the whole again (``model_construct``): its parts are typed here, the spec was
        validated when it was cached, and validating a Job runs the spec's rules once more (about 15 us a job,
        a third of a page of 20's CPU in a profile of ``GET /v1/jobs``)."""
        if spec is None:
            if row.spec is None:
                raise ValueError(f"job {row.id} was read without its spec: pass the spec")
            spec = _SPECS.get(row.id, row.spec).spec
        error = JobError(code=row.error_code, message=row.error_message or "") if row.error_code else None
        best = row.best_metrics
        return cls.model_construct(
            id=row.id,
            name=row.name,
            status=JobStatus(row.status),
            spec=spec,
            dataset=row.dataset_id,
            metadata=row.metadata_dict,
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            progress=_progress(row, now or utcnow()),
            metrics=JobMetrics(
                latest=row.latest_metrics,
                best=best,
                best_epoch=int(best["epoch"]) if best and "epoch" in best else None,
                final=row.final_metrics,
                test=row.test_metrics,
            ),
            error=error,
            result_artifacts=list(row.artifact_names),
            integrations=[MlflowIntegration.model_validate(item) for item in row.integrations or []],
            sweep_id=row.sweep_id,
            created_at=unix_seconds(row.created_at),
            updated_at=unix_seconds(row.updated_at),
            started_at=_seconds(row.started_at),
            finished_at=_seconds(row.finished_at),
        )


@dataclass(frozen=True)
class CachedSpec:
    spec: Spec
    json: bytes  # the spec as a job's answer shows it (by alias, compact)


class _SpecCache:
    """Validated specs, and their JSON, by job id: a job's spec never changes once stored, and validating it
    again for every answer cost about 120 us a job (2.4 ms a page of 20) on the bench machine; serialising it,
    about 10 us. Bounded, least recently used out first. The specs are shared between answers: read them,
    never change them (a deep copy costs twice a validation)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.specs: OrderedDict[str, CachedSpec] = OrderedDict()
        self.lock = threading.Lock()

    def cached(self, job_id: str) -> CachedSpec | None:
        with self.lock:
            return self.specs.get(job_id)

    def get(self, job_id: str, stored: dict[str, Any]) -> CachedSpec:
        with self.lock:
            found = self.specs.get(job_id)
            if found is not None:
                self.specs.move_to_end(job_id)
                return found
        spec = Spec.model_validate(stored)
        found = CachedSpec(spec, spec.__pydantic_serializer__.to_json(spec, by_alias=True))
        with self.lock:
            self.specs[job_id] = found
            if len(self.specs) > self.size:
                self.specs.popitem(last=False)
        return found


_SPECS = _SpecCache(4096)


def cached_spec(job_id: str) -> CachedSpec | None:
    """The job's validated spec if this process holds it: a reader may then leave the stored spec unread."""
    return _SPECS.cached(job_id)


def spec_of(job_id: str, stored: dict[str, Any]) -> CachedSpec:
    """The job's spec validated (from memory, else from ``stored``, then remembered)."""
    return _SPECS.get(job_id, stored)


def job_document(row: JobRow | JobRecord, spec: Any, now: datetime | None = None) -> dict[str, Any]:
    """What ``Job.from_row(row).model_dump(mode="json", by_alias=True)`` gives, in the model's field order,
    without building the models (they cost most of a page of jobs' CPU); ``spec`` goes in as given (the
    polled reads put the cached spec's JSON there). ``tests/app/api/test_hot_routes.py`` holds the two to the
    same bytes for every shape of job."""
    status = JobStatus(row.status)
    best = row.best_metrics
    integrations = row.integrations or []
    return {
        "id": row.id,
        "object": "fine_tuning.job",
        "name": row.name,
        "status": status.value,
        "spec": spec,
        "dataset": row.dataset_id,
        "metadata": row.metadata_dict,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "progress": _progress_values(row, now or utcnow()),
        "metrics": {
            "latest": row.latest_metrics,
            "best": best,
            "best_epoch": int(best["epoch"]) if best and "epoch" in best else None,
            "final": row.final_metrics,
            "test": row.test_metrics,
        },
        "error": {"code": row.error_code, "message": row.error_message or ""} if row.error_code else None,
        "result_artifacts": list(row.artifact_names),
        "integrations": [MlflowIntegration.model_validate(item).model_dump(mode="json") for item in integrations],
        "sweep_id": row.sweep_id,
        "created_at": unix_seconds(row.created_at),
        "updated_at": unix_seconds(row.updated_at),
        "started_at": _seconds(row.started_at),
        "finished_at": _seconds(row.finished_at),
    }


def _progress(row: JobRow | JobRecord, now: datetime) -> JobProgress:
    return JobProgress(**_progress_values(row, now))


def _progress_values(row: JobRow | JobRecord, now: datetime) -> dict[str, Any]:
    total = max(row.total_epochs, 1)
    done = min(row.epochs_completed, total)
    status = JobStatus(row.status)
    fraction = 1.0 if status == JobStatus.SUCCEEDED else done / total
    eta = _eta(row, status, done, total, now)
    return {"epoch": done, "total_epochs": row.total_epochs, "fraction": fraction, "eta_seconds": eta}


def _eta(row: JobRow | JobRecord, status: JobStatus, done: int, total: int, now: datetime) -> float | None:
    """Seconds left: the pace of this attempt's epochs, or the last epoch's duration before one completes."""
    if status == JobStatus.SUCCEEDED:
        return 0.0
    if status != JobStatus.RUNNING or row.attempt_started_at is None:
        return None
    remaining = total - done
    finished_this_attempt = done - row.attempt_start_epoch
    if finished_this_attempt > 0:
        elapsed = (now - row.attempt_started_at).total_seconds()
        return max(elapsed / finished_this_attempt * remaining, 0.0)
    last_epoch = (row.latest_metrics or {}).get("epoch_seconds")
    return float(last_epoch) * remaining if isinstance(last_epoch, int | float) else None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    job_id: str
    seq: int = Field(description="1, 2, 3... per job: pass the last one seen as `after`.")
    type: EventType
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any] | None
    created_at: int

    @property
    def is_terminal(self) -> bool:
        """The job's final status event: nothing follows it."""
        return self.type == EventType.STATUS and (self.data or {}).get("to") in TERMINAL_JOB_STATUSES

    @classmethod
    def from_row(cls, row: EventRow) -> JobEvent:
        return cls(
            id=row.id,
            job_id=row.job_id,
            seq=row.seq,
            type=EventType(row.type),
            level=row.level,
            message=row.message,
            data=row.data,
            created_at=unix_seconds(row.created_at),
        )


class EventPage(BaseModel):
    """Events oldest first; ``after`` takes the ``last_seq`` of a page (the seq of its last event)."""

    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool
    first_seq: int | None = None
    last_seq: int | None = None


class JobEpoch(BaseModel):
    object: Literal["fine_tuning.job.epoch"] = "fine_tuning.job.epoch"
    job_id: str
    epoch: int = Field(description="1-based.")
    metrics: dict[str, Any]
    created_at: int

    @classmethod
    def from_row(cls, row: EpochRow) -> JobEpoch:
        return cls(job_id=row.job_id, epoch=row.epoch, metrics=row.metrics, created_at=unix_seconds(row.created_at))


class EpochTable(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEpoch]


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    job_id: str
    epoch: int = Field(description="Epochs completed when it was written.")
    step: int
    mid_epoch: bool = Field(description="Written on preemption, inside an epoch.")
    is_best: bool
    metrics: dict[str, Any] | None
    bytes: int
    sha256: str
    available: bool = Field(description="False once the retention rule deleted its file.")
    created_at: int

    @classmethod
    def from_row(cls, row: CheckpointRow) -> JobCheckpoint:
        return cls(
            id=row.id,
            job_id=row.job_id,
            epoch=row.epoch,
            step=row.step,
            mid_epoch=row.mid_epoch,
            is_best=row.is_best,
            metrics=row.metrics,
            bytes=row.bytes,
            sha256=row.sha256,
            available=row.deleted_at is None,
            created_at=unix_seconds(row.created_at),
        )


class JobArtifact(BaseModel):
    id: str
    object: Literal["fine_tuning.job.artifact"] = "fine_tuning.job.artifact"
    job_id: str
    name: str
    bytes: int
    sha256: str
    created_at: int

    @classmethod
    def from_row(cls, row: ArtifactRow) -> JobArtifact:
        return cls(
            id=row.id,
            job_id=row.job_id,
            name=row.name,
            bytes=row.bytes,
            sha256=row.sha256,
            created_at=unix_seconds(row.created_at),
        )


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobArtifact]


class LRPreview(BaseModel):
    groups: list[str] = Field(description="Parameter groups: head, stage4, stage4/no_decay...")
    steps: list[int] = Field(description="Optimizer steps (0-based) of the rows.")
    lr: list[list[float | None]] = Field(description="lr[row][group]; null while the group is frozen.")


class DryRun(BaseModel):
    object: Literal["fine_tuning.job.dry_run"] = "fine_tuning.job.dry_run"
    spec: Spec = Field(description="The resolved spec.")
    num_classes: int
    train_images: int
    steps_per_epoch: int
    total_steps: int
    params_total: int
    params_trainable: int = Field(description="In the first epoch (gradual unfreezing adds more later).")
    lr_preview: LRPreview


class ConfusionSplit(BaseModel):
    matrix: list[list[int]] = Field(description="Images by true class (rows) and predicted class (columns).")
    per_class_accuracy: list[float | None] = Field(
        description="Each class's accuracy (its recall), in class order; null where the split has none of it."
    )
    images: int


class JobConfusion(BaseModel):
    object: Literal["fine_tuning.job.confusion"] = "fine_tuning.job.confusion"
    job_id: str
    class_names: list[str] = Field(description="The order of the matrices' rows and columns.")
    val: ConfusionSplit | None = Field(
        None, description="Of the published weights on the validation set; null when the job trained without one."
    )
    test: ConfusionSplit | None = Field(None, description="On the test set, when the data set has test/.")


class JobList(ListPage[Job]):
    pass


class CheckpointList(ListPage[JobCheckpoint]):
    pass
