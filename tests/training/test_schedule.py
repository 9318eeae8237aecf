"""Every schedule's learning rate at every step against a reference: the closed form of the curve, or
PyTorch's own scheduler class driven directly; warmup included, stepping per optimizer step and per epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from training.dryrun import preview_lr
from training.spec import Spec

LR = 0.1
SPE = 5  # optimizer steps per epoch
EPOCHS = 6


def spec_with(scheduler: dict, epochs: int = EPOCHS, **optimizer) -> Spec:
    return Spec.model_validate(
        {
            "data": {"dataset": "ds_x"},
            "optimizer": {"name": "sgd", "lr": LR, **optimizer},
            "scheduler": scheduler,
            "training": {"epochs": epochs},
        }
    )


def head_lrs(scheduler: dict, epochs: int = EPOCHS, **optimizer) -> np.ndarray:
    preview = preview_lr(spec_with(scheduler, epochs, **optimizer), SPE)
    assert preview.steps == list(range(epochs * SPE))
    return np.array([row[0] for row in preview.lr])


def per_interval(curve, interval: str, epochs: int = EPOCHS) -> np.ndarray:
    """The lr of each optimizer step, from ``curve(t)`` over intervals (steps, or epochs held for SPE steps)."""
    if interval == "step":
        return np.array([curve(t) for t in range(epochs * SPE)])
    return np.array([curve(t // SPE) for t in range(epochs * SPE)])


def with_warmup(curve, warmup: int, start: float = 0.1):
    """Linear warmup from start * LR over ``warmup`` intervals, then ``curve`` from its own zero."""
    return lambda t: LR * (start + (1 - start) * t / warmup) if t < warmup else curve(t - warmup)


UNITS = {"step": SPE, "epoch": 1}  # intervals per epoch


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("warmup", [0, 1])
class TestClosedForms:
    def check(self, scheduler: dict, curve, interval: str, warmup: int) -> None:
        expected_curve = with_warmup(curve, warmup * UNITS[interval]) if warmup else curve
        expected = per_interval(expected_curve, interval)
        got = head_lrs({**scheduler, "interval": interval, "warmup_epochs": warmup})
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)

    def test_constant(self, interval, warmup):
        self.check({"name": "constant"}, lambda t: LR, interval, warmup)

    def test_step(self, interval, warmup):
        u = UNITS[interval]
        self.check(
            {"name": "step", "step_size": 2, "gamma": 0.5}, lambda t: LR * 0.5 ** (t // (2 * u)), interval, warmup
        )

    def test_multistep_milestones_are_epochs_of_the_whole_run(self, interval, warmup):
        u, w = UNITS[interval], warmup * UNITS[interval]
        # Milestones 2 and 4 count from the start of the run; the curve's clock starts after warmup.
        self.check(
            {"name": "multistep", "milestones": [2, 4], "gamma": 0.1},
            lambda t: LR * 0.1 ** sum(t + w >= m * u for m in (2, 4)),
            interval,
            warmup,
        )

    def test_exponential_gamma_is_per_epoch(self, interval, warmup):
        u = UNITS[interval]
        self.check({"name": "exponential", "gamma": 0.5}, lambda t: LR * 0.5 ** (t / u), interval, warmup)

    def test_cosine_over_the_rest_of_the_run(self, interval, warmup):
        u, w = UNITS[interval], warmup * UNITS[interval]
        span = EPOCHS * u - w
        self.check(
            {"name": "cosine", "min_lr": 0.001},
            lambda t: 0.001 + (LR - 0.001) * (1 + math.cos(math.pi * t / span)) / 2,
            interval,
            warmup,
        )

    def test_cosine_with_its_own_t_max(self, interval, warmup):
        u = UNITS[interval]
        span = 2 * u
        # Past t_max PyTorch's CosineAnnealingLR keeps following the cosine back up (it is periodic).
        self.check(
            {"name": "cosine", "t_max": 2},
            lambda t: LR * (1 + math.cos(math.pi * t / span)) / 2,
            interval,
            warmup,
        )

    def test_polynomial_decays_to_zero(self, interval, warmup):
        u, w = UNITS[interval], warmup * UNITS[interval]
        span = EPOCHS * u - w
        self.check(
            {"name": "polynomial", "power": 2.0}, lambda t: LR * (1 - min(t, span) / span) ** 2, interval, warmup
        )

    def test_linear_decay_to_end_factor(self, interval, warmup):
        u, w = UNITS[interval], warmup * UNITS[interval]
        span = EPOCHS * u - w
        self.check(
            {"name": "linear", "end_factor": 0.2},
            lambda t: LR * (1 + (0.2 - 1) * min(t, span) / span),
            interval,
            warmup,
        )

    def test_cosine_restarts(self, interval, warmup):
        u = UNITS[interval]

        def curve(t: int) -> float:
            t_i, t_cur = 1 * u, t  # t_0 = 1 epoch, t_mult = 2: cycles of 1, 2, 4 epochs
            while t_cur >= t_i:
                t_cur -= t_i
                t_i *= 2
            return LR * (1 + math.cos(math.pi * t_cur / t_i)) / 2

        self.check({"name": "cosine_restarts", "t_0": 1, "t_mult": 2}, curve, interval, warmup)


def test_warmup_in_steps_and_its_start_factor():
    got = head_lrs({"name": "cosine", "warmup_steps": 7, "warmup_start_factor": 0.25})
    span = EPOCHS * SPE - 7
    expected = [
        LR * (0.25 + 0.75 * t / 7) if t < 7 else LR * (1 + math.cos(math.pi * (t - 7) / span)) / 2
        for t in range(EPOCHS * SPE)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_onecycle_matches_torch_onecycle(interval):
    got = head_lrs({"name": "onecycle", "max_lr": 0.5, "pct_start": 0.25, "interval": interval})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    total = EPOCHS * UNITS[interval]
    reference = lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=total, pct_start=0.25, cycle_momentum=False)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    np.testing.assert_allclose(got, per_interval(lambda t: lrs[t], interval), rtol=1e-6)


def test_plateau_matches_torch_reduce_on_plateau_fed_the_same_metrics():
    """The engine feeds the monitored metric at each epoch's end; here a loss that stops improving."""
    from training.optim import build_optimizer
    from training.schedule import LRSchedule

    spec = spec_with({"name": "plateau", "monitor": "val_loss", "patience": 1, "factor": 0.5, "warmup_epochs": 1})
    losses = [1.0, 0.8, 0.8, 0.8, 0.7, 0.7]
    param = torch.zeros(1, requires_grad=True)
    from training.optim import GroupPlan

    plan = GroupPlan("head", 1, True, LR, 0.0, ("p",))
    optimizer = build_optimizer([plan], {"p": param}, spec)
    schedule = LRSchedule(optimizer, spec, SPE)
    got = []
    for loss in losses:
        for _ in range(SPE):
            got.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch({"val_loss": loss})

    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    plateau = lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=1)
    expected = []
    for epoch, loss in enumerate(losses):
        for t in range(SPE):
            warm = epoch * SPE + t
            expected.append(LR * (0.1 + 0.9 * warm / SPE) if warm < SPE else ref_opt.param_groups[0]["lr"])
        if epoch >= 1:  # the plateau counts from the first epoch after warmup
            plateau.step(loss)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[-1] < LR  # it did reduce


def test_every_group_follows_the_schedule_at_its_own_scale():
    preview = preview_lr(spec_with({"name": "cosine", "warmup_epochs": 1}, backbone_lr_mult=0.1, layer_decay=0.5), SPE)
    lrs = np.array(preview.lr, dtype=float)
    groups = preview.groups
    assert groups[0] == "head" and "stage0/no_decay" in groups
    depth = {g: 0 if g.startswith("head") else 5 - int(g.split("/")[0].removeprefix("stage")) for g in groups}
    for j, group in enumerate(groups):
        scale = 1.0 if depth[group] == 0 else 0.1 * 0.5 ** depth[group]
        np.testing.assert_allclose(lrs[:, j], lrs[:, 0] * scale, rtol=1e-6)


def test_the_engine_steps_the_schedule_as_the_preview_says(colour_set, tmp_path):
    """The learning rate the fit loop used at each step is the preview's."""
    from tests.training.conftest import tiny_spec
    from training.callbacks import Callbacks
    from training.engine import Trainer

    class Lrs(Callbacks):
        def __init__(self):
            self.lrs = []

        def on_step(self, metrics):
            self.lrs.append(metrics.lr)

    spec = tiny_spec(colour_set, scheduler={"name": "cosine", "warmup_epochs": 1}, training={"epochs": 3})
    recorder = Lrs()
    trainer = Trainer(spec, tmp_path, callbacks=recorder)
    trainer.fit()
    preview = preview_lr(spec, trainer.parts.plan.steps_per_epoch)
    np.testing.assert_allclose(recorder.lrs, [row[0] for row in preview.lr], rtol=1e-6)
