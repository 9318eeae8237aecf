"""The training loop's state: its position and record, which a checkpoint saves and restores whole, and the
working values the loop keeps beside them (the device tally, this epoch's trainable parameters)."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class EpochSums:
    """Training sums of the epoch in progress, host-side values (read at epoch end or on preemption)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class Tally:
    """What the hot loop accumulates between reads, on the device where it can: no step waits on the device.
    The host reads it every ``log_every_steps`` steps, at an epoch's end, and (every step) in the divergence guard."""

    first_bad_step: torch.Tensor  # the first step whose loss was not finite, -1 while all is well
    step_counter: torch.Tensor  # optimizer steps, as first_bad_step counts them
    last_loss: torch.Tensor  # the last micro-batch's loss (the divergence guard's)
    pass_loss: torch.Tensor  # loss x images of this pass over the epoch (since its start or a rollback)
    pass_correct: torch.Tensor
    report_loss: torch.Tensor  # the sum of micro-batch losses since the last step report
    seen_before_pass: int = 0  # sums.seen when the pass began: this rank's images, all-reduced at its close
    report_batches: int = 0
    report_images: int = 0
    report_started: float = 0.0  # time.perf_counter() of the last step report (or the pass's start)

    @classmethod
    def on(cls, device: torch.device) -> Tally:
        zero = torch.zeros((), device=device)
        return cls(
            first_bad_step=torch.full((), -1, dtype=torch.long, device=device),
            step_counter=torch.zeros((), dtype=torch.long, device=device),
            last_loss=zero.clone(),
            pass_loss=zero.clone(),
            pass_correct=zero.clone(),
            report_loss=zero.clone(),
        )

    def begin_pass(self, seen: int) -> None:
        """Zero the pass's and the report's sums: a pass over an epoch starts (or restarts after a rollback)."""
        self.pass_loss = torch.zeros_like(self.pass_loss)
        self.pass_correct = torch.zeros_like(self.pass_correct)
        self.report_loss = torch.zeros_like(self.report_loss)
        self.seen_before_pass = seen
        self.report_batches = self.report_images = 0
        self.report_started = time.perf_counter()


# The TrainState fields that a checkpoint holds; the others are rebuilt by the loop.
SAVED_FIELDS = ("epoch", "step", "batches_done", "best", "history", "checkpoints")


@dataclass
class TrainState:
    """The loop's position and record (with the modules' state dicts, everything a checkpoint holds), and the
    loop's working values, which a checkpoint does not hold: the device tally, this epoch's trainable parameters
    and the module a step calls."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps since the start
    batches_done: int = 0  # micro-batches done in the unfinished epoch (a mid-epoch checkpoint)
    sums: EpochSums = field(default_factory=EpochSums)
    best: dict[str, Any] | None = None  # {"epoch", "source": "model"|"ema", "value", "checkpoint"}
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # file names on disk, oldest first
    # --- not checkpointed
    tally: Tally = field(default_factory=lambda: Tally.on(torch.device("cpu")))
    step_lr: float = 0.0  # the new head's learning rate at the last step
    trainable: list[nn.Parameter] = field(default_factory=list)  # this epoch's
    agc_params: list[nn.Parameter] = field(default_factory=list)  # those of them that AGC clips
    train_model: nn.Module | None = None  # the module a step calls: the model, or its DDP wrapper
    wrapped_for: frozenset[str] | None = None  # the trainable set train_model was wrapped for
    last_checkpoint: Path | None = None  # the last checkpoint this process wrote

    def to_dict(self) -> dict[str, Any]:
        return {**{name: copy.deepcopy(getattr(self, name)) for name in SAVED_FIELDS}, "sums": asdict(self.sums)}

    def load_dict(self, data: dict[str, Any]) -> None:
        """Take the position and record of a checkpoint (``to_dict``'s); the working values stay."""
        for name in SAVED_FIELDS:
            setattr(self, name, data[name])
        self.sums = EpochSums(**data["sums"])
        self.tally.step_counter.fill_(self.step)
