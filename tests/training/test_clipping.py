"""Gradient clipping against PyTorch's clip functions and the AGC and AutoClip formulas; telemetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.clipping import GradientClipper, adaptive_clip_, unitwise_norm
from training.spec import ClipAGC, ClipAuto, ClipNone, ClipNorm, ClipValue

CPU = torch.device("cpu")


def params_with_grads(seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(8, 4), (8,), (3, 8), (3,)]
    params = []
    for shape in shapes:
        p = nn.Parameter(torch.randn(shape, generator=generator))
        p.grad = torch.randn(shape, generator=generator) * scale
        params.append(p)
    return params


def grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("norm_type", [2, "inf"])
def test_norm_clipping_equals_clip_grad_norm(norm_type):
    ours, reference = params_with_grads(scale=10.0), params_with_grads(scale=10.0)
    GradientClipper(ClipNorm(max_norm=1.5, norm_type=norm_type), CPU, 10)(ours, ours)
    total = nn.utils.clip_grad_norm_(reference, max_norm=1.5, norm_type=float(norm_type))
    assert total > 1.5
    for a, b in zip(grads(ours), grads(reference), strict=True):
        torch.testing.assert_close(a, b)


def test_value_clipping_equals_clip_grad_value():
    ours, reference = params_with_grads(scale=3.0), params_with_grads(scale=3.0)
    GradientClipper(ClipValue(clip_value=0.5), CPU, 10)(ours, ours)
    nn.utils.clip_grad_value_(reference, 0.5)
    for a, b in zip(grads(ours), grads(reference), strict=True):
        torch.testing.assert_close(a, b)


def test_agc_matches_its_formula_on_a_hand_made_case():
    """Rows are units. Row 0: ||w|| = 5, ||g|| = 1 -> ratio 0.2 > 0.1: g scaled to 0.1 * 5 = 0.5.
    Row 1: ||w|| = 10, ||g|| = 0.5 -> ratio 0.05: unchanged. Row 2: ||w|| = 0 -> eps 1e-3 bounds it."""
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]]))
    w.grad = torch.tensor([[0.6, 0.8], [0.3, 0.4], [1.0, 0.0]])
    clipped = adaptive_clip_([w], clip_factor=0.1, eps=1e-3)
    expected = torch.tensor([[0.3, 0.4], [0.3, 0.4], [1e-4, 0.0]])
    torch.testing.assert_close(w.grad, expected)
    assert bool(clipped)
    torch.testing.assert_close(unitwise_norm(torch.tensor([3.0, 4.0])), torch.tensor(5.0))


def test_agc_leaves_out_what_it_is_not_given():
    """The engine hands AGC every trainable parameter but the final classifier's."""
    body, head = params_with_grads(scale=100.0), params_with_grads(seed=1, scale=100.0)
    head_before = grads(head)
    GradientClipper(ClipAGC(clip_factor=0.01), CPU, 10)(body + head, body)
    for a, b in zip(grads(head), head_before, strict=True):
        assert torch.equal(a, b)
    assert all(float(unitwise_norm(p.grad).max()) < 100 for p in body)


def test_engine_excludes_the_final_classifier_from_agc(colour_set, tmp_path):
    from tests.training.conftest import tiny_spec
    from training.engine import Trainer

    trainer = Trainer(tiny_spec(colour_set, clipping={"mode": "agc"}, training={"max_steps": 1}), tmp_path)
    trainer.fit()
    excluded = {n for n, p in trainer.parts.params.items() if not any(p is q for q in trainer.state.agc_params)}
    assert excluded == {"fc.weight", "fc.bias"}


def test_autoclip_threshold_is_the_percentile_of_the_norms_seen():
    clipper = GradientClipper(ClipAuto(percentile=25.0), CPU, max_steps=3)  # grows past its planned size
    seen = []
    for step in range(6):
        params = params_with_grads(seed=step, scale=float(step + 1))
        norm = float(nn.utils.get_total_norm([p.grad for p in params]))
        seen.append(norm)
        clipper(params, params)
        threshold = np.percentile(seen, 25.0)
        after = float(nn.utils.get_total_norm([p.grad for p in params]))
        assert after == pytest.approx(min(norm, threshold), rel=1e-4)
    assert clipper.seen == 6


def test_telemetry_in_every_mode_including_none():
    clipper = GradientClipper(ClipNone(), CPU, 10)
    norms = []
    for step in range(4):
        params = params_with_grads(seed=step, scale=step + 1.0)
        norms.append(float(nn.utils.get_total_norm([p.grad for p in params])))
        before = grads(params)
        clipper(params, params)
        assert all(torch.equal(a, b) for a, b in zip(grads(params), before, strict=True))
    metrics = clipper.epoch_metrics()
    assert metrics["grad_norm_mean"] == pytest.approx(np.mean(norms), rel=1e-5)
    assert metrics["grad_norm_max"] == pytest.approx(max(norms), rel=1e-5)
    assert metrics["clip_fraction"] == 0.0

    clipper = GradientClipper(ClipNorm(max_norm=norms[1] + 1e-3), CPU, 10)
    for step in range(4):
        params = params_with_grads(seed=step, scale=step + 1.0)
        clipper(params, params)
    assert clipper.epoch_metrics()["clip_fraction"] == 0.5  # steps 2 and 3 were above


def test_autoclip_history_survives_a_checkpoint():
    clipper = GradientClipper(ClipAuto(percentile=50.0), CPU, 10)
    for step in range(3):
        clipper(params_with_grads(seed=step), params_with_grads(seed=step))
    restored = GradientClipper(ClipAuto(percentile=50.0), CPU, 10)
    restored.load_state_dict(clipper.state_dict())
    assert restored.seen == 3
    assert torch.equal(restored.history[:3], clipper.history[:3])
