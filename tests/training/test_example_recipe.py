"""The from-scratch example (examples/cifar10-resnet18.yaml, the README's offline first run and CI's) learns
from its first epoch on real CIFAR-10 images: the training and the validation loss fall from epoch 1 to
epoch 2 (the earlier recipe's training loss rose for two epochs)."""

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
        self.epochs: list[dict] = []

    def on_epoch(self, metrics):
        self.epochs.append(metrics)


def test_the_from_scratch_example_learns_from_the_first_epoch(tmp_path):
    # The example's own recipe, on 100 train images a class as it says (test/ cut to 5 a class: time).
    root = make_cifar_subset(tmp_path / "cifar", per_class=100, test_per_class=5)
    example = load_spec(EXAMPLE).model_dump(mode="json")
    example["data"] |= {"path": str(root), "subset_per_class": None}
    example["training"] |= {"epochs": 2}
    losses = Losses()
    Trainer(Spec.model_validate(example), tmp_path / "run", callbacks=losses).fit()
    one, two = losses.epochs
    assert two["train_loss"] < one["train_loss"] and two["val_loss"] < one["val_loss"], losses.epochs
