"""What the engine tells the code that runs it, and the one question it asks back."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Stop(enum.Enum):
    """The answer of ``should_stop``: end the run now (cancel), or checkpoint and end it (preempt)."""

    CANCEL = "cancel"
    PREEMPT = "preempt"


@dataclass(frozen=True)
class RunInfo:
    """Told once, when the run has its data and model and is about to train."""

    class_names: list[str]
    steps_per_epoch: int
    total_steps: int
    epochs: int
    start_epoch: int
    start_step: int
    num_params: int
    trainable_params: int
    device: str
    precision: str
    in_memory: bool
    images: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepMetrics:
    """Every ``training.log_every_steps`` optimizer steps: averages over the steps since the last report."""

    epoch: int  # 1-based, the epoch in progress
    step: int  # optimizer steps since the start of the run
    step_in_epoch: int
    steps_per_epoch: int
    total_steps: int
    loss: float
    lr: float  # the new head's learning rate at the last step
    grad_norm: float  # total gradient norm before clipping, at the last step
    images_per_second: float
    elapsed_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    epoch: int  # completed epochs
    step: int
    is_best: bool
    mid_epoch: bool  # written on preemption, inside an epoch
    metrics: dict[str, Any]
    removed: tuple[Path, ...] = ()  # older checkpoints that the retention rule deleted


@dataclass(frozen=True)
class RollbackInfo:
    """The divergence guard went back to its last good state and lowered the learning rate."""

    step: int  # the optimizer step whose loss was bad
    epoch: int  # 1-based, the epoch in progress
    loss: float  # that step's loss (nan or inf, or a spike)
    reason: str  # "non_finite" or "spike"
    average: float | None  # the recent average a spike was measured against
    back_to_step: int  # the step of the state it went back to
    lr: float  # the new head's learning rate after the cut
    rollback: int  # 1 for the first rollback of the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Callbacks:
    """No-op hooks; subclass and override what you need. Each is called on the training thread."""

    def on_start(self, info: RunInfo) -> None:
        """The run is set up and about to train."""

    def on_step(self, metrics: StepMetrics) -> None:
        """Step metrics, every ``training.log_every_steps`` optimizer steps."""

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        """An epoch's metrics, once its checkpoint is recorded (the file is written in the background: its
        ``on_checkpoint`` comes once the file is complete, between later steps or before the run ends)."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """A checkpoint's file is complete (written atomically, in the background); called on the training thread
        before the next checkpoint is written and before ``fit`` returns or raises."""

    def on_rollback(self, info: RollbackInfo) -> None:
        """The divergence guard rolled the run back (``training.divergence``)."""

    def should_stop(self) -> Stop | None:
        """Checked between optimizer steps; keep it cheap (read a flag)."""
        return None
