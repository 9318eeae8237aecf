"""A run planned without running it: parameter counts, steps, and the learning rate of every group.

The model is built on the meta device (shapes, no weights, no memory), the optimizer over one
scalar per parameter group, and the real ``LRSchedule`` is built for the run; each row of the preview
reads its PyTorch schedulers in their own closed form at that row's step, so the preview is what the
engine will do, not a second implementation of the curves, and costs O(rows), not O(steps) (a spec
of a billion steps plans as fast as one of a hundred). ``plateau`` is previewed as if the monitored
metric kept improving (it never reduces); frozen groups read ``None``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from training.backbones import build_model
from training.errors import TrainingError
from training.freezing import FreezePlan
from training.optim import build_optimizer, plan_param_groups
from training.plan import PlannedRun, steps_per_epoch, total_steps
from training.schedule import LRSchedule
from training.spec import Spec

__all__ = ["Deadline", "DryRun", "DryRunTimeout", "LRPreview", "dry_run", "preview_lr", "steps_per_epoch"]


@dataclass(frozen=True)
class LRPreview:
    groups: list[str]  # parameter group names: "head", "stage4", "stage4/no_decay", ...
    steps: list[int]  # optimizer steps (0-based) the rows are taken at
    lr: list[list[float | None]]  # lr[row][group]; None while the group is frozen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DryRun:
    spec: dict[str, Any]
    num_classes: int
    train_images: int
    steps_per_epoch: int
    total_steps: int  # cut by training.max_steps, as the engine stops
    params_total: int
    params_trainable: int  # in the first epoch (gradual unfreezing adds more later)
    lr_preview: LRPreview

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DryRunTimeout(TrainingError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the dry run took longer than its limit of {seconds:g} s", code="dry_run_timeout")


@dataclass(frozen=True)
class Deadline:
    """A time limit for a dry run: ``at`` is a ``time.monotonic()`` value."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise DryRunTimeout(self.seconds)


def _lrs_after(scheduler: lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, intervals: int) -> list[float]:
    """The lr of every group after ``scheduler`` was stepped ``intervals`` times, read from PyTorch's own
    closed form (O(1), not ``intervals`` steps)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")
        if isinstance(scheduler, lr_scheduler.CosineAnnealingWarmRestarts):
            scheduler.step(intervals)  # its explicit-epoch step computes the cycle in closed form
            return [group["lr"] for group in optimizer.param_groups]
        scheduler.last_epoch = intervals
        if isinstance(scheduler, lr_scheduler.OneCycleLR):
            return [float(lr) for lr in scheduler.get_lr()]  # a function of last_epoch alone
        return [float(lr) for lr in scheduler._get_closed_form_lr()]  # type: ignore[attr-defined]


def _schedule_lrs(schedule: LRSchedule, optimizer: torch.optim.Optimizer, intervals: int) -> list[float]:
    """The lr of every group once ``intervals`` intervals of ``schedule`` are done (warmup, then the main
    schedule from its own zero, as ``SequentialLR`` runs them). A plateau schedule is previewed as if its
    metric kept improving: after warmup it holds the base lr."""
    warmup = schedule.length.warmup
    if schedule.warmup is not None and intervals < warmup:
        return _lrs_after(schedule.warmup, optimizer, intervals)
    if schedule.plateau is not None:
        return [float(group["initial_lr"]) for group in optimizer.param_groups]
    main = schedule.scheduler
    if isinstance(main, lr_scheduler.SequentialLR):
        main = main._schedulers[-1]
        intervals -= warmup
    if main is None:
        return [float(group["initial_lr"]) for group in optimizer.param_groups]
    return _lrs_after(main, optimizer, intervals)


def preview_steps(total: int, max_points: int | None) -> list[int]:
    """The optimizer steps a preview shows: every k-th (k keeps them under ``max_points``) and the last."""
    if total <= 0:
        return []
    every = max(1, math.ceil(total / max_points)) if max_points else 1
    steps = list(range(0, total, every))
    if steps[-1] != total - 1:
        steps.append(total - 1)
    return steps


def preview_lr(
    spec: Spec,
    steps_per_epoch: int,
    *,
    num_classes: int = 2,
    max_points: int | None = None,
    deadline: Deadline | None = None,
) -> LRPreview:
    """The learning rate of every parameter group at the optimizer steps of ``spec``'s run that it shows.

    ``max_points`` keeps every k-th step (and the last) so that long runs stay small enough to chart. The
    work is O(points), not O(steps): each row reads the schedule in closed form at its step. Past
    ``deadline`` it stops with ``DryRunTimeout``.
    """
    built = build_model(spec.backbone, num_classes, spec.image_size, empty=True)
    plans = plan_param_groups(built, spec)
    scalars = {name: torch.zeros(1, requires_grad=True) for plan in plans for name in plan.param_names[:1]}
    single = [type(plan)(**{**asdict(plan), "param_names": plan.param_names[:1]}) for plan in plans]
    optimizer = build_optimizer(single, scalars, spec)
    schedule = LRSchedule(optimizer, spec, steps_per_epoch)
    freeze = FreezePlan(built, spec.backbone.freeze)
    per_interval = 1 if spec.scheduler.interval == "step" else steps_per_epoch
    taken = preview_steps(total_steps(spec, steps_per_epoch), max_points)
    rows: list[list[float | None]] = []
    for count, step in enumerate(taken):
        if deadline is not None and count % 64 == 0:
            deadline.check()
        trainable = freeze.trainable_stages(step // steps_per_epoch)
        lrs = _schedule_lrs(schedule, optimizer, step // per_interval)
        rows.append([lr if plan.stage in trainable else None for lr, plan in zip(lrs, plans, strict=True)])
    return LRPreview(groups=[plan.name for plan in plans], steps=taken, lr=rows)


def dry_run(
    spec: Spec,
    *,
    train_counts: Sequence[int],
    has_val: bool,
    max_points: int | None = 2000,
    deadline: Deadline | None = None,
) -> DryRun:
    """Plan ``spec`` on a data set with ``train_counts`` images per class in train/ (and a val/ or not)."""
    plan = PlannedRun.of(spec, train_counts, has_val=has_val)
    built = build_model(spec.backbone, len(train_counts), spec.image_size, empty=True)
    trainable = FreezePlan(built, spec.backbone.freeze).trainable_stages(0)
    params = list(built.model.named_parameters())
    preview = preview_lr(
        spec, plan.steps_per_epoch, num_classes=len(train_counts), max_points=max_points, deadline=deadline
    )
    return DryRun(
        spec=spec.model_dump(mode="json"),
        num_classes=len(train_counts),
        train_images=plan.train_images,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        params_total=sum(p.numel() for _, p in params),
        params_trainable=sum(p.numel() for n, p in params if built.stage_of(n) in trainable),
        lr_preview=preview,
    )
