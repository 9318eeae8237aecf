"""A run planned without running it: parameter counts, steps, and the learning rate of every group.

The model is built on the meta device (shapes, no weights, no memory), the optimizer over one
scalar per parameter group, and the real ``LRSchedule`` is stepped through the run: the preview
is what the engine will do, not a second implementation of the curves. ``plateau`` is previewed
as if the monitored metric kept improving (it never reduces); frozen groups read ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

import torch

from training.backbones import build_model
from training.dataset import planned_train_images, train_batches
from training.freezing import FreezePlan
from training.optim import build_optimizer, plan_param_groups
from training.schedule import LRSchedule
from training.spec import MonitorMetric, Spec, monitor_mode


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
    total_steps: int
    params_total: int
    params_trainable: int  # in the first epoch (gradual unfreezing adds more later)
    lr_preview: LRPreview

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_epoch(spec: Spec, train_images: int) -> int:
    """Optimizer steps per epoch, as the engine will count them."""
    return math.ceil(train_batches(train_images, spec.data.batch_size) / spec.training.grad_accum_steps)


def preview_lr(spec: Spec, steps_per_epoch: int, *, num_classes: int = 2, max_points: int | None = None) -> LRPreview:
    """The learning rate of every parameter group at every optimizer step of ``spec``'s run.

    ``max_points`` keeps every k-th step (and the last) so that long runs stay small enough to chart.
    """
    built = build_model(spec.backbone, num_classes, spec.image_size, empty=True)
    plans = plan_param_groups(built, spec)
    scalars = {name: torch.zeros(1, requires_grad=True) for plan in plans for name in plan.param_names[:1]}
    single = [type(plan)(**{**asdict(plan), "param_names": plan.param_names[:1]}) for plan in plans]
    optimizer = build_optimizer(single, scalars, spec)
    schedule = LRSchedule(optimizer, spec, steps_per_epoch)
    freeze = FreezePlan(built, spec.backbone.freeze)
    total = spec.training.epochs * steps_per_epoch
    every = max(1, math.ceil(total / max_points)) if max_points else 1
    rows: list[list[float | None]] = []
    taken: list[int] = []
    for epoch in range(spec.training.epochs):
        trainable = freeze.trainable_stages(epoch)
        for step_in_epoch in range(steps_per_epoch):
            step = epoch * steps_per_epoch + step_in_epoch
            if step % every == 0 or step == total - 1:
                taken.append(step)
                rows.append(
                    [
                        g["lr"] if plan.stage in trainable else None
                        for g, plan in zip(optimizer.param_groups, plans, strict=True)
                    ]
                )
            optimizer.step()  # no gradients: nothing moves, but the schedule sees a stepped optimizer
            schedule.after_step()
        schedule.after_epoch(_improving_metrics(spec, epoch))
    return LRPreview(groups=[plan.name for plan in plans], steps=taken, lr=rows)


def _improving_metrics(spec: Spec, epoch: int) -> dict[str, float]:
    """Metrics that improve every epoch, for previewing a plateau schedule."""
    metrics = {}
    for name in get_args(MonitorMetric):
        metrics[name] = 1.0 / (epoch + 1) if monitor_mode(name) == "min" else 1.0 - 1.0 / (epoch + 2)
    return metrics


def dry_run(spec: Spec, *, train_counts: Sequence[int], has_val: bool, max_points: int | None = 2000) -> DryRun:
    """Plan ``spec`` on a data set with ``train_counts`` images per class in train/ (and a val/ or not)."""
    train_images = planned_train_images(
        train_counts, has_val=has_val, val_split=spec.data.val_split, subset_per_class=spec.data.subset_per_class
    )
    per_epoch = steps_per_epoch(spec, train_images)
    built = build_model(spec.backbone, len(train_counts), spec.image_size, empty=True)
    trainable = FreezePlan(built, spec.backbone.freeze).trainable_stages(0)
    params = list(built.model.named_parameters())
    return DryRun(
        spec=spec.model_dump(mode="json"),
        num_classes=len(train_counts),
        train_images=train_images,
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * spec.training.epochs,
        params_total=sum(p.numel() for _, p in params),
        params_trainable=sum(p.numel() for n, p in params if built.stage_of(n) in trainable),
        lr_preview=preview_lr(spec, per_epoch, num_classes=len(train_counts), max_points=max_points),
    )
