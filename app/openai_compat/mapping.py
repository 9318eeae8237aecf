"""OpenAI's requests onto this service's, and its objects back into OpenAI's shapes. No logic of its own
beyond the translation: jobs and data sets are made, read and cancelled by their services."""

from __future__ import annotations

import copy
import time
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.clock import unix_seconds
from app.db.models import Checkpoint, Dataset, Job, JobEvent
from app.errors import NotFound, Unprocessable
from app.ids import is_id
from app.openai_compat.schemas import (
    FileObject,
    FineTuningError,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    MethodShown,
    SupervisedHyperparameters,
)
from app.schemas.jobs import Job as JobSchema
from app.schemas.jobs import JobCreate
from app.services import jobs
from app.statuses import DatasetStatus, EventType, JobStatus
from training.spec import Spec

# OpenAI has no "cancelling" or "pausing": a job asked to stop is still running until its worker stops it (and
# may yet succeed, when it finishes first). Its jobs never show "validating_files": a job here needs a ready file.
STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.CANCELLING: "running",
    JobStatus.PAUSING: "running",
    JobStatus.PAUSED: "paused",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
FILE_STATUS = {DatasetStatus.VALIDATING: "uploaded", DatasetStatus.READY: "processed", DatasetStatus.FAILED: "error"}
METRIC_EVENTS = {EventType.EPOCH, EventType.STEP}
LEVELS = {"info": "info", "warning": "warn", "error": "error"}


# --- requests -------------------------------------------------------------------------------


def _hyperparameters(request: FineTuningJobCreate) -> Hyperparameters:
    """``method.supervised.hyperparameters``, else the older top-level ``hyperparameters``."""
    supervised = request.method.supervised if request.method is not None else None
    if supervised is not None and supervised.hyperparameters is not None:
        return supervised.hyperparameters
    return request.hyperparameters or Hyperparameters()


def _section(spec: dict[str, Any], name: str) -> dict[str, Any]:
    section = spec.setdefault(name, {})
    if not isinstance(section, dict):
        raise Unprocessable(f"spec.{name} must be an object", param=f"spec.{name}", code="invalid_spec")
    return section


def _backbone(session: Session, project_id: str, request: FineTuningJobCreate, spec: dict[str, Any]) -> None:
    """``model``: a backbone name, or an earlier job's id whose weights the run starts from."""
    backbone = _section(spec, "backbone")
    if request.model.startswith("ftjob_"):
        try:
            earlier = jobs.get_job(session, project_id, request.model)
        except NotFound:
            raise NotFound(f"no job {request.model} to continue from", param="model", code="model_not_found") from None
        backbone["name"] = earlier.spec["backbone"]["name"]
        backbone["init_from"] = request.model
        return
    named = backbone.get("name")
    if named is not None and named != request.model:
        raise Unprocessable(
            f"model is {request.model} but spec.backbone.name is {named}: name one backbone", param="model"
        )
    backbone["name"] = request.model


def job_create(session: Session, project_id: str, request: FineTuningJobCreate) -> JobCreate:
    """The job this service runs for an OpenAI create request: the ``spec`` given through ``extra_body``,
    with ``model``, ``training_file``, the hyperparameters and ``seed`` written into it."""
    if request.validation_file is not None and request.validation_file != request.training_file:
        raise Unprocessable(
            "validation_file: a separate file is not supported; put a val/ folder in the training file's archive "
            "(or let spec.data.val_split hold out a part of train/)",
            param="validation_file",
        )
    spec = copy.deepcopy(request.spec or {})
    data = _section(spec, "data")
    if data.get("dataset") not in (None, request.training_file):
        raise Unprocessable("spec.data.dataset and training_file name different files", param="training_file")
    data["dataset"] = request.training_file
    _backbone(session, project_id, request, spec)
    hyper = _hyperparameters(request)
    if isinstance(hyper.n_epochs, int):
        _section(spec, "training")["epochs"] = hyper.n_epochs
    if isinstance(hyper.batch_size, int):
        data["batch_size"] = hyper.batch_size
    if request.seed is not None:
        _section(spec, "training")["seed"] = request.seed
    rest = {"name": request.suffix, "metadata": request.metadata, "integrations": request.integrations}
    created = _validated({"spec": spec, **rest})
    if isinstance(hyper.learning_rate_multiplier, float | int):
        scaled = created.spec.model_dump(mode="json")
        scaled["optimizer"]["lr"] = created.spec.optimizer.lr * hyper.learning_rate_multiplier
        created = _validated({"spec": scaled, **rest})
    return created


def _validated(body: dict[str, Any]) -> JobCreate:
    """A 422 that names the spec's field, as ``POST /v1/jobs`` answers."""
    try:
        return JobCreate.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors(include_url=False)]
        ) from None


# --- objects --------------------------------------------------------------------------------


def _default_lr(spec: Spec) -> float:
    default = type(spec.optimizer).model_fields["lr"].default
    return float(default) if isinstance(default, int | float) else spec.optimizer.lr


def fine_tuning_job(row: Job) -> FineTuningJob:
    shown = JobSchema.from_row(row)
    spec = shown.spec
    hyper = SupervisedHyperparameters(
        n_epochs=spec.training.epochs,
        batch_size=spec.data.batch_size,
        learning_rate_multiplier=spec.optimizer.lr / _default_lr(spec),
    )
    error = FineTuningError(code=shown.error.code, message=shown.error.message) if shown.error else None
    eta = shown.progress.eta_seconds
    return FineTuningJob(
        id=row.id,
        created_at=shown.created_at,
        error=error,
        fine_tuned_model=row.id if shown.status == JobStatus.SUCCEEDED else None,
        finished_at=shown.finished_at,
        hyperparameters=hyper,
        model=row.init_from if row.init_from and is_id("job", row.init_from) else spec.backbone.name,
        organization_id=row.project_id,
        result_files=[],
        seed=spec.training.seed if spec.training.seed is not None else 0,
        status=STATUS[shown.status],
        training_file=row.dataset_id,
        estimated_finish=round(time.time() + eta) if eta is not None else None,
        metadata=shown.metadata or None,
        integrations=[integration.model_dump(mode="json") for integration in shown.integrations],
        method=MethodShown(supervised={"hyperparameters": hyper}),
        user_provided_suffix=row.name,
        spec=spec,
    )


def job_event(row: JobEvent) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=row.id,
        created_at=unix_seconds(row.created_at),
        level=LEVELS.get(row.level, "info"),
        message=row.message,
        data=row.data,
        type="metrics" if row.type in METRIC_EVENTS else "message",
    )


def job_checkpoint(row: Checkpoint) -> FineTuningJobCheckpoint:
    numbers = {k: float(v) for k, v in (row.metrics or {}).items() if isinstance(v, int | float)}
    return FineTuningJobCheckpoint(
        id=row.id,
        created_at=unix_seconds(row.created_at),
        fine_tuned_model_checkpoint=row.id,
        fine_tuning_job_id=row.job_id,
        metrics={"step": float(row.step), **numbers},
        step_number=row.step,
    )


def file_object(row: Dataset) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=unix_seconds(row.created_at),
        filename=row.filename,
        status=FILE_STATUS[DatasetStatus(row.status)],
        status_details=row.error_message,
    )


def check_purpose(fields: dict[str, str]) -> None:
    purpose = fields.get("purpose")
    if purpose != "fine-tune":
        raise Unprocessable(
            f"purpose must be fine-tune (an image archive to train on), not {purpose!r}", param="purpose"
        )
