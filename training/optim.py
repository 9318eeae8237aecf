"""Optimizers and their parameter groups, built once, by rule.

Groups are (stage, decay) pairs: the new head and each backbone stage, each split into the
parameters that take weight decay and those that do not (biases and normalization weights,
unless ``regularization.decay_norm_and_bias``). Each group's learning rate is the head's,
times ``backbone_lr_mult`` for the backbone, times ``layer_decay`` once per stage below the head.

Every group is in the optimizer from the start, frozen or not: a frozen parameter has no
gradient, and PyTorch's optimizers skip parameters without one, so it does not change at all;
when it unfreezes it trains at its group's scheduled learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.backbones import BuiltModel
from training.registry import lookup
from training.spec import AdamOptimizer, AdamWOptimizer, RMSpropOptimizer, SGDOptimizer, Spec

DECOUPLED_DECAY = "manual_decoupled_weight_decay"  # param-group key: decay applied outside SGD/RMSprop
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class GroupPlan:
    """One parameter group: which parameters, at what learning rate and weight decay."""

    name: str
    stage: int  # num_stages for the head
    decay: bool
    lr: float
    weight_decay: float
    param_names: tuple[str, ...]


def no_decay_names(model: nn.Module) -> set[str]:
    """Biases and the weights of normalization layers: by rule, they take no weight decay."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, NORM_LAYERS):
                names.add(full)
    return names


def group_lr(spec: Spec, stage: int, num_stages: int) -> float:
    """The learning rate of a stage (num_stages is the head)."""
    optimizer = spec.optimizer
    if stage == num_stages:
        return optimizer.lr
    depth = num_stages - stage  # the last backbone stage is one below the head
    decay = optimizer.layer_decay**depth if optimizer.layer_decay is not None else 1.0
    return optimizer.lr * optimizer.backbone_lr_mult * decay


def plan_param_groups(built: BuiltModel, spec: Spec) -> list[GroupPlan]:
    """The groups for a model, head first, then the stages from the top down; empty groups left out."""
    reg = spec.regularization
    exempt = set() if reg.decay_norm_and_bias else no_decay_names(built.model)
    members: dict[tuple[int, bool], list[str]] = {}
    for name, _ in built.model.named_parameters():
        members.setdefault((built.stage_of(name), name not in exempt), []).append(name)
    plans = []
    for stage in range(built.num_stages, -1, -1):
        base = "head" if stage == built.num_stages else f"stage{stage}"
        for decay in (True, False):
            names = members.get((stage, decay))
            if names:
                plans.append(
                    GroupPlan(
                        name=base if decay else f"{base}/no_decay",
                        stage=stage,
                        decay=decay,
                        lr=group_lr(spec, stage, built.num_stages),
                        weight_decay=reg.weight_decay if decay else 0.0,
                        param_names=tuple(names),
                    )
                )
    return plans


Groups = list[dict[str, Any]]


def _sgd(groups: Groups, opt: SGDOptimizer, decoupled: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, dampening=opt.dampening, nesterov=opt.nesterov)


def _adam(groups: Groups, opt: AdamOptimizer | AdamWOptimizer, decoupled: bool) -> torch.optim.Optimizer:
    # adam and adamw differ only in their default weight_decay_mode: the mode picks the torch class.
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, amsgrad=opt.amsgrad)


def _rmsprop(groups: Groups, opt: RMSpropOptimizer, decoupled: bool) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        groups, lr=opt.lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum, centered=opt.centered
    )


@dataclass(frozen=True)
class OptimizerEntry:
    """How to build one ``optimizer.name``: the torch optimizer over the groups, and whether it applies
    decoupled weight decay itself (AdamW) or needs ``apply_decoupled_weight_decay`` before each step."""

    build: Callable[[Groups, Any, bool], torch.optim.Optimizer]  # (groups, the spec's optimizer, decoupled)
    own_decoupled_decay: bool


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(_sgd, own_decoupled_decay=False),
    "adam": OptimizerEntry(_adam, own_decoupled_decay=True),
    "adamw": OptimizerEntry(_adam, own_decoupled_decay=True),
    "rmsprop": OptimizerEntry(_rmsprop, own_decoupled_decay=False),
}


def build_optimizer(plans: list[GroupPlan], params: Mapping[str, torch.Tensor], spec: Spec) -> torch.optim.Optimizer:
    """The optimizer over the planned groups. Decay goes in the optimizer's own form for the mode:

    l2: ``weight_decay`` of SGD, Adam and RMSprop (added to the gradient);
    decoupled: AdamW's for adam and adamw; for SGD and RMSprop, ``apply_decoupled_weight_decay``
    before each step (the group keeps its rate under ``DECOUPLED_DECAY``; not torch's own
    ``decoupled_weight_decay`` key, a flag that Adam and AdamW keep in their groups).
    """
    opt = spec.optimizer
    entry = lookup(OPTIMIZERS, "optimizer", opt.name)
    decoupled = spec.regularization.weight_decay_mode == "decoupled"
    in_optimizer = not decoupled or entry.own_decoupled_decay
    groups: Groups = []
    for plan in plans:
        group: dict[str, Any] = {
            "params": [params[name] for name in plan.param_names],
            "lr": plan.lr,
            "name": plan.name,
            "stage": plan.stage,
            "weight_decay": plan.weight_decay if in_optimizer else 0.0,
        }
        if not in_optimizer:
            group[DECOUPLED_DECAY] = plan.weight_decay
        groups.append(group)
    return entry.build(groups, opt, decoupled)


@torch.no_grad()
def apply_decoupled_weight_decay(optimizer: torch.optim.Optimizer) -> None:
    """p <- p * (1 - lr * wd) for groups that carry ``DECOUPLED_DECAY``, trained parameters only."""
    for group in optimizer.param_groups:
        rate = group.get(DECOUPLED_DECAY, 0.0)
        if rate:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * rate)
