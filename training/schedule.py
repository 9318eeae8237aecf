"""Learning-rate schedules from PyTorch's own scheduler classes, composed with a linear warmup.

The schedule advances once per *interval*: every optimizer step (``interval: step``) or every
epoch. Durations in the spec are epochs and become intervals here; ``warmup_steps`` is already
in steps. Warmup is ``LinearLR`` from ``warmup_start_factor`` to 1, chained to the main schedule
with ``SequentialLR``, whose clock starts when warmup ends (so ``step_size`` and ``t_max`` count
from there, while ``milestones`` are epochs of the whole run). ``plateau`` is
``ReduceLROnPlateau``, stepped with the monitored metric at each epoch's end once warmup is over.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from training.registry import lookup
from training.spec import (
    ConstantSchedule,
    CosineRestartsSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    PolynomialSchedule,
    Spec,
    StepSchedule,
)


@dataclass(frozen=True)
class ScheduleLength:
    """The schedule's clock, in intervals."""

    per_epoch: int  # intervals per epoch: optimizer steps, or 1
    total: int
    warmup: int

    @classmethod
    def of(cls, spec: Spec, steps_per_epoch: int) -> ScheduleLength:
        sched = spec.scheduler
        per_epoch = steps_per_epoch if sched.interval == "step" else 1
        total = spec.training.epochs * per_epoch
        warmup = sched.warmup_steps if sched.warmup_steps is not None else sched.warmup_epochs * per_epoch
        if warmup >= total:
            raise ValueError(
                f"scheduler.warmup_steps: a warmup of {warmup} steps must be shorter than the run ({total} steps)"
            )
        return cls(per_epoch=per_epoch, total=total, warmup=warmup)

    @property
    def main(self) -> int:
        return self.total - self.warmup


MainScheduler = Callable[[torch.optim.Optimizer, Any, Spec, ScheduleLength], lr_scheduler.LRScheduler | None]


def _constant(optimizer: torch.optim.Optimizer, s: ConstantSchedule, spec: Spec, length: ScheduleLength) -> Any:
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _step(optimizer: torch.optim.Optimizer, s: StepSchedule, spec: Spec, length: ScheduleLength) -> Any:
    return lr_scheduler.StepLR(optimizer, step_size=s.step_size * length.per_epoch, gamma=s.gamma)


def _multistep(optimizer: torch.optim.Optimizer, s: MultiStepSchedule, spec: Spec, length: ScheduleLength) -> Any:
    milestones = [m * length.per_epoch - length.warmup for m in s.milestones]
    return lr_scheduler.MultiStepLR(optimizer, milestones=[m for m in milestones if m > 0], gamma=s.gamma)


def _exponential(optimizer: torch.optim.Optimizer, s: ExponentialSchedule, spec: Spec, length: ScheduleLength) -> Any:
    return lr_scheduler.ExponentialLR(optimizer, gamma=s.gamma ** (1.0 / length.per_epoch))


def _cosine(optimizer: torch.optim.Optimizer, s: CosineSchedule, spec: Spec, length: ScheduleLength) -> Any:
    t_max = s.t_max * length.per_epoch if s.t_max is not None else length.main
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=s.min_lr)


def _cosine_restarts(
    optimizer: torch.optim.Optimizer, s: CosineRestartsSchedule, spec: Spec, length: ScheduleLength
) -> Any:
    t_0 = s.t_0 * length.per_epoch
    return lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t_0, T_mult=s.t_mult, eta_min=s.min_lr)


def _polynomial(optimizer: torch.optim.Optimizer, s: PolynomialSchedule, spec: Spec, length: ScheduleLength) -> Any:
    total = s.total_epochs * length.per_epoch if s.total_epochs is not None else length.main
    return lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=s.power)


def _linear(optimizer: torch.optim.Optimizer, s: LinearSchedule, spec: Spec, length: ScheduleLength) -> Any:
    total = s.total_epochs * length.per_epoch if s.total_epochs is not None else length.main
    return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=s.end_factor, total_iters=total)


def _onecycle(optimizer: torch.optim.Optimizer, s: OneCycleSchedule, spec: Spec, length: ScheduleLength) -> Any:
    scale = (s.max_lr or spec.optimizer.lr) / spec.optimizer.lr
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] * scale for group in optimizer.param_groups],
        total_steps=length.total,
        pct_start=s.pct_start,
        anneal_strategy=s.anneal_strategy,
        div_factor=s.div_factor,
        final_div_factor=s.final_div_factor,
        three_phase=s.three_phase,
        cycle_momentum=s.cycle_momentum,
    )


def _plateau(optimizer: torch.optim.Optimizer, s: PlateauSchedule, spec: Spec, length: ScheduleLength) -> None:
    return None  # ReduceLROnPlateau is stepped by hand, with the epoch's metric (LRSchedule.plateau)


# The schedule after warmup, by scheduler.name: (optimizer, the spec's scheduler, the spec, the clock).
SCHEDULERS: dict[str, MainScheduler] = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
    "cosine": _cosine,
    "cosine_restarts": _cosine_restarts,
    "polynomial": _polynomial,
    "linear": _linear,
    "onecycle": _onecycle,
    "plateau": _plateau,
}


def _main_scheduler(
    optimizer: torch.optim.Optimizer, spec: Spec, length: ScheduleLength
) -> lr_scheduler.LRScheduler | None:
    """The schedule after warmup; None for plateau, which is stepped by hand."""
    build = lookup(SCHEDULERS, "scheduler", spec.scheduler.name)
    return build(optimizer, spec.scheduler, spec, length)


class LRSchedule:
    """The learning-rate schedule of one run; the engine calls ``after_step`` and ``after_epoch``."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: Spec, steps_per_epoch: int) -> None:
        self.spec = spec.scheduler
        self.length = ScheduleLength.of(spec, steps_per_epoch)
        self.intervals = 0  # intervals completed
        with warnings.catch_warnings():
            # SequentialLR steps its children with an explicit epoch at each milestone, which torch warns about.
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")
            self.warmup = (
                lr_scheduler.LinearLR(
                    optimizer,
                    start_factor=self.spec.warmup_start_factor,
                    end_factor=1.0,
                    total_iters=self.length.warmup,
                )
                if self.length.warmup
                else None
            )
            main = _main_scheduler(optimizer, spec, self.length)
            self.plateau: lr_scheduler.ReduceLROnPlateau | None = None
            if isinstance(self.spec, PlateauSchedule):
                s = self.spec
                self.plateau = lr_scheduler.ReduceLROnPlateau(
                    optimizer,
                    mode=s.mode or "min",
                    factor=s.factor,
                    patience=s.patience,
                    threshold=s.threshold,
                    threshold_mode=s.threshold_mode,
                    cooldown=s.cooldown,
                    min_lr=s.min_lr,
                )
                self.scheduler: lr_scheduler.LRScheduler | None = self.warmup
            elif self.warmup is not None and main is not None:
                self.scheduler = lr_scheduler.SequentialLR(
                    optimizer, schedulers=[self.warmup, main], milestones=[self.length.warmup]
                )
            else:
                self.scheduler = main

    def _advance(self) -> None:
        if self.plateau is not None and self.intervals >= self.length.warmup:
            self.intervals += 1
            return  # after warmup, only the epoch's metric moves a plateau schedule
        if self.scheduler is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")
                self.scheduler.step()
        self.intervals += 1

    def after_step(self) -> None:
        """After each optimizer step."""
        if self.spec.interval == "step":
            self._advance()

    def after_epoch(self, metrics: dict[str, Any]) -> None:
        """After each epoch's evaluation, with its metrics (the plateau schedule reads its monitor)."""
        if self.spec.interval == "epoch":
            self._advance()
        if self.plateau is not None and self.intervals > self.length.warmup:
            monitor = self.spec.monitor  # type: ignore[union-attr]
            self.plateau.step(metrics[monitor])

    def state_dict(self) -> dict[str, Any]:
        return {
            "intervals": self.intervals,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.intervals = state["intervals"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
