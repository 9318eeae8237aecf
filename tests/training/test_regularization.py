"""Label smoothing, mixup/CutMix, EMA and early stopping against their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.training.conftest import tiny_spec
from training.engine import Trainer
from training.regularization import EarlyStopping, MixedTargets, Mixer, classification_loss, cutmix, make_ema
from training.spec import EarlyStoppingSpec, MixupSpec


def test_label_smoothing_equals_torch_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    for eps in (0.0, 0.1, 0.3):
        torch.testing.assert_close(
            classification_loss(logits, labels, eps), F.cross_entropy(logits, labels, label_smoothing=eps)
        )


def test_mixup_mixes_images_and_targets_convexly():
    images = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 3
    mixed, targets = Mixer(MixupSpec(mixup_alpha=0.4))(images, labels, torch.Generator().manual_seed(2))
    assert isinstance(targets, MixedTargets) and 0.0 <= targets.lam <= 1.0
    # Each mixed image is lam * its own + (1 - lam) * a partner's, and the partner's label is targets.b.
    lam = targets.lam
    for i in range(8):
        partners = [j for j in range(8) if torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[j], atol=1e-6)]
        assert partners and all(labels[j] == targets.b[i] for j in partners)
    soft = targets.soft(3, smoothing=0.1)
    expected = targets.lam * ((1 - 0.1) * F.one_hot(labels, 3) + 0.1 / 3) + (1 - targets.lam) * (
        (1 - 0.1) * F.one_hot(targets.b, 3) + 0.1 / 3
    )
    torch.testing.assert_close(soft, expected.float())
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
    # The loss of mixed targets is the cross entropy of the soft target distribution.
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(classification_loss(logits, targets, 0.1), F.cross_entropy(logits, soft))


def test_cutmix_pastes_a_box_and_lam_is_the_kept_area():
    images = torch.zeros(4, 1, 10, 10)
    images[1] = 1.0
    perm = torch.tensor([1, 0, 3, 2])
    mixed, lam = cutmix(images, perm, 0.75, torch.Generator().manual_seed(0))
    pasted = (mixed[0] == 1.0).float().mean().item()  # image 0 got a box of image 1 (all ones)
    assert pasted == pytest.approx(1 - lam)
    assert 0 < pasted < 0.5
    assert torch.equal(mixed[2], images[2])  # 2 and 3 are both zeros: nothing visible changes


def test_mixup_is_seeded_per_batch():
    images, labels = torch.randn(6, 3, 4, 4), torch.arange(6) % 2
    mixer = Mixer(MixupSpec(mixup_alpha=1.0, cutmix_alpha=1.0))
    a = mixer(images, labels, torch.Generator().manual_seed(7))
    b = mixer(images, labels, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and a[1].lam == b[1].lam


def test_ema_follows_its_update_rule():
    model = nn.Linear(3, 2)
    ema = make_ema(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step + 1.0)
        ema.update_parameters(model)
        current = model.state_dict()
        if step == 0:
            expected = {k: v.clone() for k, v in current.items()}  # the first update copies
        else:
            expected = {k: 0.9 * expected[k] + 0.1 * current[k] for k in expected}
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])


@pytest.mark.parametrize(
    ("values", "mode", "patience", "min_delta", "stops_after"),
    [
        ([1.0, 0.9, 0.95, 0.96, 0.97, 0.5], "min", 3, 0.0, 5),  # epochs 3, 4, 5 do not improve
        ([1.0, 0.9, 0.89, 0.88, 0.87, 0.86], "min", 2, 0.05, 4),  # improvements under min_delta do not count
        ([0.1, 0.2, 0.3, 0.3, 0.2, 0.4], "max", 2, 0.0, 5),
        ([1.0, 0.9, 0.8, 0.7], "min", 1, 0.0, None),
    ],
)
def test_early_stopping_stops_at_the_right_epoch(values, mode, patience, min_delta, stops_after):
    stopper = EarlyStopping(EarlyStoppingSpec(monitor="val_loss", mode=mode, patience=patience, min_delta=min_delta))
    stopped = next((epoch for epoch, v in enumerate(values, 1) if stopper.update({"val_loss": v})), None)
    assert stopped == stops_after


def test_the_engine_stops_early(colour_set, tmp_path):
    """With a min_delta no epoch can beat, the run stops after 1 + patience epochs."""
    spec = tiny_spec(
        colour_set,
        regularization={"early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 1e9}},
        training={"epochs": 6, "log_every_steps": 50},
    )
    result = Trainer(spec, tmp_path).fit()
    assert result.status == "early_stopped" and result.epochs_completed == 3
    assert (tmp_path / "model.safetensors").is_file()


def test_ema_is_evaluated_and_published_when_it_validates_better(colour_set, tmp_path):
    spec = tiny_spec(colour_set, regularization={"ema": {"decay": 0.5}}, training={"epochs": 3, "log_every_steps": 50})
    trainer = Trainer(spec, tmp_path)
    result = trainer.fit()
    assert all("ema_val_acc" in h and "ema_val_loss" in h for h in result.history)
    candidates = [("model", h["epoch"], h["val_acc"]) for h in result.history]
    candidates += [("ema", h["epoch"], h["ema_val_acc"]) for h in result.history]
    best_value = max(value for _, _, value in candidates)
    assert result.best["value"] == best_value
    source = result.best["source"]
    assert (source, result.best["epoch"]) in [(s, e) for s, e, v in candidates if v == best_value]
    import json

    card = json.loads((tmp_path / "model.json").read_text())
    assert card["metrics"]["published"]["source"] == source
    assert card["metrics"]["published"]["val_acc"] == pytest.approx(best_value)


def test_mixup_and_cutmix_train_in_the_engine(colour_set, tmp_path):
    spec = tiny_spec(
        colour_set,
        regularization={"mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, "label_smoothing": 0.1},
        training={"epochs": 1},
    )
    result = Trainer(spec, tmp_path).fit()
    assert result.status == "completed"
