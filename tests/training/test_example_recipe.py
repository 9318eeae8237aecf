"""The from-scratch example (examples/cifar10-resnet18.yaml, the README's offline first run and CI's) learns
from its first epoch on real CIFAR-10 images: the training loss falls within epoch 1 and from epoch to
epoch, and so does the validation loss (the earlier recipe's rose for two epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cifar import make_cifar_subset
from training.callbacks import Callbacks
from training.engine import Trainer
from training.spec import Spec, load_spec

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cifar10-resnet18.yaml"


class Losses(Callbacks):
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epochs: list[dict] = []

    def on_step(self, metrics):
        if metrics.epoch == 1:
            self.steps.append(metrics.loss)

    def on_epoch(self, metrics):
        self.epochs.append(metrics)


def test_the_from_scratch_example_learns_from_the_first_epoch(tmp_path):
    # The example's own recipe, on 100 train images a class as it says (test/ cut to 5 a class: time).
    root = make_cifar_subset(tmp_path / "cifar", per_class=100, test_per_class=5)
    example = load_spec(EXAMPLE).model_dump(mode="json")
    example["data"] |= {"path": str(root), "subset_per_class": None}
    example["training"] |= {"epochs": 2, "log_every_steps": 1}
    losses = Losses()
    Trainer(Spec.model_validate(example), tmp_path / "run", callbacks=losses).fit()
    first, last = losses.steps[:3], losses.steps[-3:]
    assert sum(last) / 3 < sum(first) / 3, losses.steps  # within epoch 1
    one, two = losses.epochs
    assert two["train_loss"] < one["train_loss"] and two["val_loss"] < one["val_loss"], losses.epochs
