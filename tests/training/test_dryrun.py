"""The dry run: a run's size and learning rates planned without training, as the engine will run it."""

from __future__ import annotations

from typing import Any

from training.dryrun import dry_run
from training.plan import PlannedRun
from training.spec import Spec


def spec_with(**training: Any) -> Spec:
    return Spec.model_validate(
        {
            "backbone": {"name": "resnet18"},
            "data": {"path": "/data", "image_size": 32, "batch_size": 2, "val_split": 0.25},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "training": {"epochs": 5, **training},
        }
    )


def test_max_steps_cuts_the_planned_steps_and_the_lr_preview():
    counts = [5, 5]  # 4 per class train, 1 held out: 8 images, 4 steps an epoch

    full = dry_run(spec_with(), train_counts=counts, has_val=False)
    cut = dry_run(spec_with(max_steps=7), train_counts=counts, has_val=False)

    assert full.steps_per_epoch == cut.steps_per_epoch == 4
    assert full.total_steps == 20 and full.lr_preview.steps == list(range(20))
    assert cut.total_steps == 7 == PlannedRun.of(spec_with(max_steps=7), counts, has_val=False).total_steps
    assert cut.lr_preview.steps == list(range(7))
    assert cut.lr_preview.lr == full.lr_preview.lr[:7]  # the schedule still spans every epoch: the run stops early


def test_max_steps_beyond_the_run_changes_nothing():
    counts = [5, 5]
    full = dry_run(spec_with(), train_counts=counts, has_val=False)
    long = dry_run(spec_with(max_steps=1000), train_counts=counts, has_val=False)
    assert long.total_steps == full.total_steps == 20 and long.lr_preview == full.lr_preview
