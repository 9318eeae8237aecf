"""Which stages train at each epoch, and keeping the frozen ones exactly as they were.

A frozen stage has ``requires_grad=False`` (no gradient, so the optimizer skips it and its
weights stay bit-identical) and its modules stay in eval mode (batch-norm statistics unchanged,
dropout off). ``freeze_bn`` does the same to every batch-norm layer of the backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from training.backbones import BuiltModel
from training.registry import lookup
from training.spec import Freeze, FreezeGradual, FreezeStages

# The first stage that trains in an epoch, by freeze strategy: (the strategy's spec, num_stages, epoch) -> stage.
# num_stages is the head, which always trains.
FREEZE_STRATEGIES: dict[str, Callable[[Any, int, int], int]] = {
    "none": lambda spec, num_stages, epoch: 0,
    "linear_probe": lambda spec, num_stages, epoch: num_stages,
    "stages": lambda spec, num_stages, epoch: _first_of_stages(spec),
    "gradual": lambda spec, num_stages, epoch: _first_of_gradual(spec, num_stages, epoch),
}


def _first_of_stages(spec: FreezeStages) -> int:
    return spec.frozen_stages


def _first_of_gradual(spec: FreezeGradual, num_stages: int, epoch: int) -> int:
    unfrozen = sum(1 for at in spec.unfreeze_at if at <= epoch)  # one more stage per milestone
    return num_stages - unfrozen


class FreezePlan:
    def __init__(self, built: BuiltModel, spec: Freeze) -> None:
        self.built = built
        self.spec = spec

    def trainable_stages(self, epoch: int) -> set[int]:
        """Stages that train in ``epoch`` (0-based); ``num_stages`` is the head and always trains."""
        n = self.built.num_stages
        first = lookup(FREEZE_STRATEGIES, "freeze strategy", self.spec.strategy)(self.spec, n, epoch)
        return set(range(max(first, 0), n + 1))

    def apply(self, epoch: int) -> None:
        """Set ``requires_grad`` for ``epoch``; call at the start of each epoch."""
        trainable = self.trainable_stages(epoch)
        for name, param in self.built.model.named_parameters():
            param.requires_grad_(self.built.stage_of(name) in trainable)
        if self.spec.freeze_bn:
            for module in self._batch_norms():
                for param in module.parameters(recurse=False):
                    param.requires_grad_(False)

    def set_train_mode(self, epoch: int) -> None:
        """``model.train()``, then eval mode for the frozen stages and, with freeze_bn, every batch norm."""
        self.built.model.train()
        trainable = self.trainable_stages(epoch)
        for stage in range(self.built.num_stages):
            if stage not in trainable:
                for module in self.built.stage_modules(stage):
                    module.eval()
        if self.spec.freeze_bn:
            for module in self._batch_norms():
                module.eval()

    def _batch_norms(self) -> list[nn.Module]:
        return [m for m in self.built.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
