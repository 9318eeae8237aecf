"""Gradient clipping, and its telemetry in every mode.

Each step measures the total gradient norm before clipping; the per-epoch mean, max and the
fraction of clipped steps accumulate in device tensors, so that no step waits on the device:
the host reads them only when the engine reports (every ``log_every_steps`` and at epoch end).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn.utils import clip_grad_value_, clip_grads_with_norm_, get_total_norm

from training.registry import lookup
from training.spec import ClipAGC, ClipAuto, ClipNorm, Clipping, ClipValue


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output unit (row of a linear layer, filter of a convolution); of the whole for vectors."""
    norm: torch.Tensor = x.norm(2) if x.ndim <= 1 else x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)
    return norm


@torch.no_grad()
def adaptive_clip_(params: Sequence[torch.Tensor], clip_factor: float, eps: float) -> torch.Tensor:
    """Adaptive gradient clipping (Brock et al., 2021), in place. Returns whether any unit was clipped (a tensor).

    For each unit: if ||g|| / max(||w||, eps) > clip_factor, g <- g * clip_factor * max(||w||, eps) / ||g||.
    """
    clipped = torch.zeros((), dtype=torch.bool, device=params[0].device if params else "cpu")
    for p in params:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clip_factor
        grad_norm = unitwise_norm(p.grad.detach())
        over = grad_norm > max_norm
        p.grad.mul_(torch.where(over, max_norm / grad_norm.clamp_min(1e-6), torch.ones_like(grad_norm)))
        clipped |= over.any()
    return clipped


class GradientClipper:
    """Clips per the spec and keeps the telemetry.

    ``params`` are all trainable parameters; ``agc_params`` those AGC applies to (the final classifier left out).
    ``max_steps`` sizes AutoClip's history buffer.
    """

    def __init__(self, spec: Clipping, device: torch.device, max_steps: int) -> None:
        self.spec = spec
        self.device = device
        self.norm_type = float("inf") if isinstance(spec, ClipNorm) and spec.norm_type == "inf" else 2.0
        self.history = torch.zeros(max_steps if isinstance(spec, ClipAuto) else 0, device=device)
        self.seen = 0  # norms in the AutoClip history
        self.last_norm = torch.zeros((), device=device)
        self.reset_epoch()

    def reset_epoch(self) -> None:
        self.norm_sum = torch.zeros((), device=self.device)
        self.norm_max = torch.zeros((), device=self.device)
        self.clipped = torch.zeros((), device=self.device)
        self.steps = 0

    @torch.no_grad()
    def __call__(self, params: Sequence[torch.Tensor], agc_params: Sequence[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        total = get_total_norm(grads, norm_type=self.norm_type)
        clipped = lookup(CLIPPERS, "clipping mode", self.spec.mode)(self, params, agc_params, total)
        finite = torch.isfinite(total)
        safe = torch.where(finite, total, torch.zeros_like(total))
        self.last_norm = total
        self.norm_sum += safe
        self.norm_max = torch.maximum(self.norm_max, safe)
        self.clipped += clipped.float()
        self.steps += 1

    def autoclip_threshold(self, total: torch.Tensor) -> torch.Tensor:
        """The ``percentile`` of every total norm seen so far, this one included (AutoClip, Seetharaman et al.)."""
        assert isinstance(self.spec, ClipAuto)
        if self.seen >= len(self.history):  # more steps than planned (a resumed, longer run): grow
            grow = torch.zeros(max(1024, len(self.history)), device=self.device)
            self.history = torch.cat([self.history, grow])
        self.history[self.seen] = total
        self.seen += 1
        return torch.quantile(self.history[: self.seen], self.spec.percentile / 100.0)

    def epoch_metrics(self) -> dict[str, float]:
        """Mean and max gradient norm and the fraction of clipped steps since the last reset (one host sync)."""
        if not self.steps:
            return {"grad_norm_mean": 0.0, "grad_norm_max": 0.0, "clip_fraction": 0.0}
        values = torch.stack([self.norm_sum / self.steps, self.norm_max, self.clipped / self.steps]).tolist()
        return {"grad_norm_mean": values[0], "grad_norm_max": values[1], "clip_fraction": values[2]}

    def state_dict(self) -> dict[str, Any]:
        """AutoClip's history, and the epoch's telemetry so far (a checkpoint may fall inside an epoch)."""
        return {
            "history": self.history[: self.seen].cpu(),
            "seen": self.seen,
            "epoch": {
                "norm_sum": self.norm_sum.cpu(),
                "norm_max": self.norm_max.cpu(),
                "clipped": self.clipped.cpu(),
                "steps": self.steps,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch = state["epoch"]
        self.norm_sum = epoch["norm_sum"].to(self.device)
        self.norm_max = epoch["norm_max"].to(self.device)
        self.clipped = epoch["clipped"].to(self.device)
        self.steps = epoch["steps"]
        self.seen = state["seen"]
        if self.seen:
            capacity = max(len(self.history), self.seen)
            self.history = torch.zeros(capacity, device=self.device)
            self.history[: self.seen] = state["history"].to(self.device)


Params = Sequence[torch.Tensor]


def _clip_none(clipper: GradientClipper, params: Params, agc_params: Params, total: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=torch.bool, device=clipper.device)


def _clip_norm(clipper: GradientClipper, params: Params, agc_params: Params, total: torch.Tensor) -> torch.Tensor:
    assert isinstance(clipper.spec, ClipNorm)
    clip_grads_with_norm_(params, clipper.spec.max_norm, total)
    return total > clipper.spec.max_norm


def _clip_value(clipper: GradientClipper, params: Params, agc_params: Params, total: torch.Tensor) -> torch.Tensor:
    assert isinstance(clipper.spec, ClipValue)
    largest = get_total_norm([p.grad for p in params if p.grad is not None], norm_type=float("inf"))
    clip_grad_value_(params, clipper.spec.clip_value)
    return largest > clipper.spec.clip_value


def _clip_agc(clipper: GradientClipper, params: Params, agc_params: Params, total: torch.Tensor) -> torch.Tensor:
    assert isinstance(clipper.spec, ClipAGC)
    return adaptive_clip_(agc_params, clipper.spec.clip_factor, clipper.spec.eps)


def _clip_auto(clipper: GradientClipper, params: Params, agc_params: Params, total: torch.Tensor) -> torch.Tensor:
    threshold = clipper.autoclip_threshold(total)
    clip_grads_with_norm_(params, threshold, total)  # type: ignore[arg-type]  # a tensor: no host sync
    return total > threshold


# Clip in place, by clipping.mode: (clipper, trainable params, AGC's params, total norm) -> whether it clipped.
CLIPPERS: dict[str, Callable[[GradientClipper, Params, Params, torch.Tensor], torch.Tensor]] = {
    "none": _clip_none,
    "norm": _clip_norm,
    "value": _clip_value,
    "agc": _clip_agc,
    "autoclip": _clip_auto,
}
