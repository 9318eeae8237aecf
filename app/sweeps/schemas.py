"""Sweeps as the API takes and shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.clock import unix_seconds
from app.schemas.common import ListPage
from app.statuses import JobStatus, SweepStatus
from training.spec import MonitorMetric

Algorithm = Literal["grid", "random", "tpe"]


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: MonitorMetric = Field("val_acc", description="An epoch metric each trial reports at every epoch end.")
    mode: Literal["min", "max"] | None = Field(None, description="Default: min for a loss, max otherwise.")


class AshaStopping(BaseModel):
    """Asynchronous successive halving: at epochs min_epochs * reduction_factor**k a trial goes on only if it is
    in the best 1/reduction_factor of the trials that reached that epoch."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha"] = "asha"
    min_epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    reduction_factor: Annotated[int, Field(ge=2, le=10)] = 3


class MedianStopping(BaseModel):
    """Stop a trial whose best value so far is worse than the median of earlier trials at the same epoch."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["median"] = "median"
    min_epochs: Annotated[int, Field(ge=1, le=1000)] = 1


EarlyStopping = Annotated[AshaStopping | MedianStopping, Field(discriminator="type")]


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str | None, Field(max_length=200)] = None
    spec: dict[str, Any] = Field(description="The base spec, as for a job; each trial sets the searched paths in it.")
    space: dict[str, dict[str, list[Any]]] = Field(
        description="Spec path -> {int|uniform|loguniform: [low, high]} or {choice|grid: [values]}.",
        examples=[{"optimizer.lr": {"loguniform": [1e-4, 1e-1]}, "scheduler.name": {"choice": ["cosine", "onecycle"]}}],
        max_length=32,
    )
    algorithm: Algorithm = "tpe"
    objective: Objective = Field(default_factory=Objective)
    max_trials: Annotated[int, Field(ge=1, le=1000)] = 10
    max_parallel: Annotated[int, Field(ge=1, le=100)] = 2
    early_stopping: EarlyStopping | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = Field(None, description="The sampler's; default: random.")


class SweepTrial(BaseModel):
    job_id: str
    number: int = Field(description="The trial's number in the sweep, from 0.")
    status: JobStatus
    params: dict[str, Any]
    objective: float | None = Field(description="The objective at the trial's last epoch.")
    epochs: int = Field(description="Epochs completed (where a pruned trial stopped).")


class BestTrial(SweepTrial):
    spec: dict[str, Any] = Field(description="Its resolved spec: submit it as a job to train it again.")


class Sweep(BaseModel):
    id: str
    object: Literal["sweep"] = "sweep"
    name: str | None
    status: SweepStatus
    algorithm: Algorithm
    objective: Objective
    space: dict[str, dict[str, list[Any]]]
    base_spec: dict[str, Any]
    max_trials: int
    max_parallel: int
    early_stopping: AshaStopping | MedianStopping | None
    seed: int
    trial_counts: dict[str, int] = Field(description="Trials by status.")
    trials: list[SweepTrial] = Field(description="Oldest first.")
    best_trial: BestTrial | None
    created_at: int
    updated_at: int
    finished_at: int | None


class SweepList(ListPage[Sweep]):
    pass


def seconds(moment: datetime | None) -> int | None:
    return unix_seconds(moment) if moment is not None else None
