"""Regularization that acts in the loop: the loss with label smoothing, mixup/CutMix, EMA, early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.spec import EarlyStoppingSpec, MixupSpec


@dataclass(frozen=True)
class MixedTargets:
    """Targets of a mixed batch: ``lam`` of ``a`` and ``1 - lam`` of ``b`` (a permutation of ``a``)."""

    a: torch.Tensor
    b: torch.Tensor
    lam: float

    def soft(self, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
        """The soft target distribution: lam * onehot(a) + (1 - lam) * onehot(b), each label-smoothed."""
        return self.lam * smooth_one_hot(self.a, num_classes, smoothing) + (1.0 - self.lam) * smooth_one_hot(
            self.b, num_classes, smoothing
        )


Targets = torch.Tensor | MixedTargets


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(1 - smoothing) * onehot + smoothing / num_classes, as ``cross_entropy(label_smoothing=...)`` defines it."""
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def classification_loss(logits: torch.Tensor, targets: Targets, label_smoothing: float) -> torch.Tensor:
    """Cross entropy with label smoothing, for hard or mixed targets (linear in the target, so mixing the
    two losses equals the loss of the mixed soft target)."""
    logits = logits.float()
    if isinstance(targets, MixedTargets):
        loss_a = F.cross_entropy(logits, targets.a, label_smoothing=label_smoothing)
        loss_b = F.cross_entropy(logits, targets.b, label_smoothing=label_smoothing)
        return targets.lam * loss_a + (1.0 - targets.lam) * loss_b
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class Mixer:
    """Mixup or CutMix on a batch, with its randomness from a generator the caller seeds per batch."""

    def __init__(self, spec: MixupSpec) -> None:
        self.spec = spec

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, Targets]:
        spec = self.spec
        draws = torch.rand(2, generator=generator).tolist()  # a CPU generator: no device sync
        if draws[0] >= spec.prob or images.shape[0] < 2:
            return images, labels
        use_cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha == 0 or draws[1] < spec.switch_prob)
        alpha = spec.cutmix_alpha if use_cutmix else spec.mixup_alpha
        lam = _beta(alpha, generator)
        perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
        if use_cutmix:
            images, lam = cutmix(images, perm, lam, generator)
        else:
            images = lam * images + (1.0 - lam) * images[perm]
        return images, MixedTargets(labels, labels[perm], lam)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from two Gamma draws of ``generator``."""
    x = torch._standard_gamma(torch.full((2,), alpha), generator=generator).tolist()
    return x[0] / (x[0] + x[1]) if x[0] + x[1] > 0 else 0.5


def cutmix(
    images: torch.Tensor, perm: torch.Tensor, lam: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Paste a box of area about (1 - lam) from the permuted batch; lam becomes the kept area exactly."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = (torch.rand(2, generator=generator) * torch.tensor([height, width])).long().tolist()
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """PyTorch's AveragedModel as an EMA: ema <- decay * ema + (1 - decay) * param, buffers averaged too."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, spec: EarlyStoppingSpec) -> None:
        self.spec = spec
        self.best: float | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.spec.mode == "min":
            return value < self.best - self.spec.min_delta
        return value > self.best + self.spec.min_delta

    def update(self, metrics: dict[str, Any]) -> bool:
        """Record an epoch; True when training should stop now."""
        value = float(metrics[self.spec.monitor])
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.spec.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
