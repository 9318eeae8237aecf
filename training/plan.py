"""The size of a planned run, from the class counts of its data set alone: no torch, no images read.

The service checks a spec's planned steps against the operator's ceiling with this before it queues
anything; the dry run and the engine count steps the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from training.spec import Spec
from training.splits import planned_train_images


def train_batches(num_images: int, batch_size: int) -> int:
    """Training batches per epoch: a short last batch is kept only if it holds at least half a batch.

    Batch norm normalizes by the batch's own statistics: a batch of two or three images gives
    gradients orders of magnitude larger than a full one. The order is reshuffled every epoch, so
    the images left out differ each time. A set smaller than one batch trains as one batch.
    """
    full, rest = divmod(num_images, batch_size)
    if full == 0:
        return 1 if num_images >= 2 else 0
    return full + (1 if rest >= max(batch_size // 2, 2) else 0)


def steps_per_epoch(spec: Spec, train_images: int) -> int:
    """Optimizer steps per epoch, as the engine will count them."""
    return math.ceil(train_batches(train_images, spec.data.batch_size) / spec.training.grad_accum_steps)


def total_steps(spec: Spec, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: every epoch's, cut by ``training.max_steps`` (the engine stops there;
    the schedule still spans every epoch)."""
    total = spec.training.epochs * steps_per_epoch
    return min(total, spec.training.max_steps) if spec.training.max_steps is not None else total


@dataclass(frozen=True)
class PlannedRun:
    train_images: int
    steps_per_epoch: int
    total_steps: int  # epochs x steps per epoch, cut by training.max_steps

    @classmethod
    def of(cls, spec: Spec, train_counts: Sequence[int], *, has_val: bool) -> PlannedRun:
        images = planned_train_images(train_counts, spec.data, has_val=has_val)
        per_epoch = steps_per_epoch(spec, images)
        return cls(train_images=images, steps_per_epoch=per_epoch, total_steps=total_steps(spec, per_epoch))
