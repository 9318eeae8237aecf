"""The engine learns on real images: a seeded CIFAR-10 subset from ../shared/data."""

import pytest

from tests.cifar import make_cifar_subset
from training.engine import Trainer
from training.spec import Spec


@pytest.mark.slow
def test_resnet18_from_scratch_gets_clearly_above_chance_on_cifar10_test(tmp_path):
    data = make_cifar_subset(tmp_path / "cifar", per_class=150, test_per_class=50)
    spec = Spec.model_validate(
        {
            "backbone": {"name": "resnet18"},
            "data": {"path": str(data), "image_size": 32, "batch_size": 64},
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True},
            "regularization": {"weight_decay": 5e-4, "label_smoothing": 0.1},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "training": {"epochs": 5, "seed": 0},
        }
    )
    result = Trainer(spec, tmp_path / "run").fit()
    assert result.test is not None
    assert result.test["test_acc"] > 0.25, result.test  # chance is 0.10 on ten classes
    assert result.test["test_acc_top5"] > 0.7
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
