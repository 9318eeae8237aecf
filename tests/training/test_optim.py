"""Parameter groups by rule, and weight decay in its two forms against their formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.backbones import build_model
from training.optim import DECOUPLED_DECAY, GroupPlan, apply_decoupled_weight_decay, build_optimizer, plan_param_groups
from training.spec import Spec


def spec_with(**sections) -> Spec:
    return Spec.model_validate({"data": {"dataset": "ds_x"}, **sections})


def groups_of(name: str, **sections):
    built = build_model(spec_with(backbone={"name": name}).backbone, 10, 32, empty=True)
    return built, plan_param_groups(built, spec_with(backbone={"name": name}, **sections))


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "vit_b_32", "efficientnet_b0"])
def test_the_no_decay_groups_hold_exactly_the_biases_and_normalization_weights(name):
    built, plans = groups_of(name)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    expected = set()
    for module_name, module in built.model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if param_name == "bias" or isinstance(module, norms):
                expected.add(f"{module_name}.{param_name}" if module_name else param_name)
    no_decay = {n for plan in plans if not plan.decay for n in plan.param_names}
    assert no_decay == expected
    assert all(plan.weight_decay == 0.0 for plan in plans if not plan.decay)
    assert all(plan.weight_decay == 5e-4 for plan in plans if plan.decay)
    everything = [n for plan in plans for n in plan.param_names]
    assert sorted(everything) == sorted(n for n, _ in built.model.named_parameters())  # each exactly once


def test_decay_norm_and_bias_puts_everything_under_decay():
    _, plans = groups_of("resnet18", regularization={"decay_norm_and_bias": True})
    assert all(plan.decay and plan.weight_decay == 5e-4 for plan in plans)


def test_backbone_multiplier_and_layer_decay_from_the_head_down():
    _, plans = groups_of("resnet18", optimizer={"lr": 0.1, "backbone_lr_mult": 0.5, "layer_decay": 0.8})
    lrs = {plan.name: plan.lr for plan in plans}
    assert lrs["head"] == 0.1
    for stage in range(5):
        assert lrs[f"stage{stage}"] == pytest.approx(0.1 * 0.5 * 0.8 ** (5 - stage))
    assert lrs["stage4/no_decay"] == lrs["stage4"]


def one_param_optimizer(spec: Spec, w0: float) -> tuple[torch.optim.Optimizer, nn.Parameter]:
    w = nn.Parameter(torch.tensor([w0]))
    plan = GroupPlan("head", 1, True, spec.optimizer.lr, spec.regularization.weight_decay, ("w",))
    return build_optimizer([plan], {"w": w}, spec), w


def step(optimizer, w, grad: float) -> float:
    w.grad = torch.tensor([grad])
    apply_decoupled_weight_decay(optimizer)
    optimizer.step()
    return float(w.detach()[0])


LR, WD, W0, G = 0.1, 0.5, 2.0, 0.3


def test_sgd_l2_decay_is_added_to_the_gradient():
    spec = spec_with(optimizer={"name": "sgd", "lr": LR, "momentum": 0.0}, regularization={"weight_decay": WD})
    assert spec.regularization.weight_decay_mode == "l2"
    assert step(*one_param_optimizer(spec, W0), G) == pytest.approx(W0 - LR * (G + WD * W0))


def test_sgd_decoupled_decay_shrinks_the_weight():
    spec = spec_with(
        optimizer={"name": "sgd", "lr": LR, "momentum": 0.0},
        regularization={"weight_decay": WD, "weight_decay_mode": "decoupled"},
    )
    assert step(*one_param_optimizer(spec, W0), G) == pytest.approx(W0 * (1 - LR * WD) - LR * G)


def test_adam_l2_and_adamw_decoupled_first_steps():
    """Adam's first step moves by lr * g / (|g| + eps) of the gradient it sees."""
    eps = 1e-8
    l2 = spec_with(optimizer={"name": "adam", "lr": LR}, regularization={"weight_decay": WD})
    g = G + WD * W0
    assert step(*one_param_optimizer(l2, W0), G) == pytest.approx(W0 - LR * g / (abs(g) + eps))
    decoupled = spec_with(optimizer={"name": "adamw", "lr": LR}, regularization={"weight_decay": WD})
    assert decoupled.regularization.weight_decay_mode == "decoupled"
    optimizer, w = one_param_optimizer(decoupled, W0)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert step(optimizer, w, G) == pytest.approx(W0 * (1 - LR * WD) - LR * G / (abs(G) + eps))


def test_rmsprop_decoupled_is_applied_outside_the_optimizer():
    spec = spec_with(
        optimizer={"name": "rmsprop", "lr": LR, "alpha": 0.9},
        regularization={"weight_decay": WD, "weight_decay_mode": "decoupled"},
    )
    optimizer, w = one_param_optimizer(spec, W0)
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    assert optimizer.param_groups[0][DECOUPLED_DECAY] == WD
    # RMSprop's first step: v = (1 - alpha) g^2, update lr * g / (sqrt(v) + eps)
    expected = W0 * (1 - LR * WD) - LR * G / ((0.1 * G * G) ** 0.5 + 1e-8)
    assert step(optimizer, w, G) == pytest.approx(expected)


def test_each_optimizer_gets_its_own_hyperparameters():
    built, _ = groups_of("resnet18")
    params = dict(built.model.named_parameters())
    cases = {
        "sgd": ({"momentum": 0.8, "dampening": 0.1, "nesterov": False}, torch.optim.SGD),
        "adam": ({"betas": [0.8, 0.9], "eps": 1e-6, "amsgrad": True}, torch.optim.Adam),
        "adamw": ({"betas": [0.85, 0.95]}, torch.optim.AdamW),
        "rmsprop": ({"alpha": 0.95, "momentum": 0.5, "centered": True}, torch.optim.RMSprop),
    }
    for name, (hyper, cls) in cases.items():
        spec = spec_with(optimizer={"name": name, **hyper})
        optimizer = build_optimizer(plan_param_groups(built, spec), params, spec)
        assert type(optimizer) is cls
        for key, value in hyper.items():
            expected = tuple(value) if isinstance(value, list) else value
            assert optimizer.defaults[key] == expected, (name, key)


def test_optimizer_hyperparameters_are_validated():
    from pydantic import ValidationError

    for bad in ({"name": "sgd", "momentum": 1.5}, {"name": "adam", "eps": 0}, {"name": "rmsprop", "alpha": -0.1}):
        with pytest.raises(ValidationError):
            spec_with(optimizer=bad)
