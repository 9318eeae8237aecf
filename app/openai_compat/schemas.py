"""OpenAI's file, fine-tuning job, event and checkpoint objects, with what this service adds (``spec``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.schemas.jobs import Metadata
from training.spec import Spec

Auto = Literal["auto"]
_AUTO_INT: dict[str, Any] = {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}, {"type": "null"}]}
_AUTO_NUMBER: dict[str, Any] = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "auto"}, {"type": "null"}]
}
OpenAIStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]


class Hyperparameters(BaseModel):
    """Each a positive number or "auto" (this service's default, or what the spec says)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto | None = Field(None, description="spec.training.epochs", json_schema_extra=_AUTO_INT)
    batch_size: int | Auto | None = Field(None, description="spec.data.batch_size", json_schema_extra=_AUTO_INT)
    learning_rate_multiplier: float | Auto | None = Field(
        None,
        description="Multiplies spec.optimizer.lr (the optimizer's default lr unless the spec sets one).",
        json_schema_extra=_AUTO_NUMBER,
    )

    @field_validator("n_epochs", "batch_size", mode="wrap")
    @classmethod
    def _count(cls, value: Any, _handler: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("a positive integer or 'auto'")
        return value

    @field_validator("learning_rate_multiplier", mode="wrap")
    @classmethod
    def _multiplier(cls, value: Any, _handler: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ValueError("a positive number or 'auto'")
        return float(value)


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"] = Field(
        description="Image classification is supervised; dpo and reinforcement are not."
    )
    supervised: SupervisedMethod | None = None


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="A backbone name (resnet18, vit_b_16...), or an earlier succeeded job's id to continue from."
    )
    training_file: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="A file uploaded with purpose fine-tune: an ImageFolder archive (val/ for validation)."
    )
    validation_file: str | None = Field(None, description="Only the training file itself: put val/ in its archive.")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = Field(None, description="spec.training.seed")
    suffix: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="The job's name."
    )
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = Field(
        None, description='[{"type": "mlflow", "mlflow": {"experiment", "run_name", "tags"}}]; W&B is not supported.'
    )
    spec: dict[str, Any] | None = Field(
        None, description="This service's whole job spec (extra_body={'spec': {...}}); the fields above override it."
    )


class FineTuningError(BaseModel):
    code: str
    message: str
    param: str | None = None


class SupervisedHyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class MethodShown(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, SupervisedHyperparameters]


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningError | None
    fine_tuned_model: str | None = Field(
        description="The job's id once it succeeded: its weights download from /v1/jobs/{id}/weights, and it is a "
        "`model` to continue from."
    )
    finished_at: int | None
    hyperparameters: SupervisedHyperparameters
    model: str
    organization_id: str = Field(description="The project.")
    result_files: list[str]
    seed: int
    status: OpenAIStatus
    trained_tokens: None = None
    training_file: str | None
    validation_file: None = None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None
    method: MethodShown
    user_provided_suffix: str | None
    spec: Spec = Field(description="This service's resolved spec: what runs.")


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None
    type: Literal["message", "metrics"]


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="The checkpoint's id: a spec's backbone.init_from.")
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
