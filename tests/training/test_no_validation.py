"""``data.val_split: 0``: train on all of train/ with no validation. The published weights are the last
epoch's, or the best by a test_ metric when the spec asks for one; a monitor on a val_ metric is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_spec
from training.checkpoint import load_checkpoint
from training.engine import Trainer
from training.errors import TrainingError
from training.export import export_state_dict
from training.spec import Spec


def test_val_split_0_leaves_the_monitor_unset_and_the_default_is_val_acc(colour_set):
    assert tiny_spec(colour_set, data={"val_split": 0}).training.monitor is None
    assert tiny_spec(colour_set).training.monitor == "val_acc"
    assert Spec.model_validate({"data": {"path": "x"}}).data.val_split == 0.1


def test_all_of_train_is_trained_and_the_last_epoch_is_published(colour_set, tmp_path):
    trainer = Trainer(tiny_spec(colour_set, data={"val_split": 0}, training={"epochs": 3}), tmp_path)
    result = trainer.fit()
    assert trainer.parts.data.counts == {"train": 72, "test": 18}  # 24 a class, none held out
    assert all(not key.startswith(("val_", "ema_val_")) for epoch in result.history for key in epoch)
    assert result.best is None and result.final == {}
    published = json.loads((tmp_path / "metrics.json").read_text())["published"]
    assert published["epoch"] == 3 and published["source"] == "model"
    assert set(result.test or {}) == {"test_loss", "test_acc"}
    last = load_checkpoint(tmp_path / "checkpoints" / "epoch-003.pt")["model"]
    trainer.parts.model.load_state_dict(last)
    weights = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in export_state_dict(trainer.parts.model).items())


def test_a_test_monitor_selects_the_published_epoch_on_test(colour_set, tmp_path):
    spec = tiny_spec(
        colour_set, data={"val_split": 0}, training={"epochs": 3, "monitor": "test_loss", "keep_checkpoints": "all"}
    )
    result = Trainer(spec, tmp_path).fit()
    losses = [epoch["test_loss"] for epoch in result.history]  # test/ evaluated every epoch, as asked
    best = losses.index(min(losses)) + 1
    assert result.best is not None and result.best["epoch"] == best
    published = json.loads((tmp_path / "metrics.json").read_text())["published"]
    assert published["epoch"] == best and published["test_loss"] == pytest.approx(min(losses), rel=1e-5)


@pytest.mark.parametrize(
    ("sections", "where"),
    [
        ({"training": {"monitor": "val_loss"}}, "training.monitor"),
        ({"regularization": {"early_stopping": {"patience": 2}}}, "regularization.early_stopping.monitor"),
        ({"scheduler": {"name": "plateau"}}, "scheduler.monitor"),
    ],
)
def test_a_val_monitor_without_validation_data_is_refused_naming_the_field(colour_set, tmp_path, sections, where):
    spec = tiny_spec(colour_set, data={"val_split": 0}, **sections)
    with pytest.raises(TrainingError) as caught:
        Trainer(spec, tmp_path).fit()
    assert caught.value.code == "invalid_spec"
    assert str(caught.value).startswith(f"{where}: ") and "val_split" in str(caught.value)
