"""The spec: defaults, variants, cross-field rules reported at the field's path, no torch."""

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from training.spec import Spec, format_validation_error, load_spec, spec_json_schema


def problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(data)
    return format_validation_error(caught.value)


def test_defaults_give_a_sensible_fine_tune():
    spec = Spec.model_validate({"data": {"path": "./data"}})
    assert spec.backbone.name == "resnet18" and spec.backbone.weights is None
    assert spec.optimizer.name == "sgd" and spec.optimizer.lr == 0.01 and spec.optimizer.momentum == 0.9
    assert spec.regularization.weight_decay == 5e-4
    assert spec.regularization.weight_decay_mode == "l2"  # resolved: the stored spec says what runs
    assert spec.clipping.mode == "none" and spec.scheduler.name == "constant"
    assert spec.training.epochs == 3 and spec.training.precision == "auto"
    assert spec.data.image_size == 32 and spec.data.batch_size == 64 and spec.data.val_split == 0.1


def test_the_public_contract_keys_round_trip(tmp_path):
    # The top-level keys as the issue gives them, one section a line.
    yaml_text = """
backbone:       {name: resnet18, weights: null, init_from: null, head: {dropout: 0.0, hidden: []},
                 freeze: {strategy: none}}
data:           {path: ./data, image_size: 32, val_split: 0.1, batch_size: 64,
                 augment: {hflip: true, random_crop: true}}
optimizer:      {name: sgd, lr: 0.01, momentum: 0.9, nesterov: false}
regularization: {weight_decay: 5.0e-4, label_smoothing: 0.0}
clipping:       {mode: none}
scheduler:      {name: constant, warmup_epochs: 0}
training:       {epochs: 3, seed: 0, precision: auto, deterministic: false}
"""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml_text)
    spec = load_spec(path)
    again = Spec.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec


def test_weight_decay_mode_follows_the_optimizer():
    adamw = Spec.model_validate({"data": {"path": "d"}, "optimizer": {"name": "adamw"}})
    assert adamw.regularization.weight_decay_mode == "decoupled"
    assert adamw.optimizer.lr == 1e-3
    explicit = Spec.model_validate(
        {"data": {"path": "d"}, "optimizer": {"name": "adamw"}, "regularization": {"weight_decay_mode": "l2"}}
    )
    assert explicit.regularization.weight_decay_mode == "l2"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"data": {}}, "data.path: give exactly one of data.path"),
        ({"data": {"path": "a", "dataset": "ds_1"}}, "data.path: give exactly one"),
        ({"data": {"dataset": "../etc"}}, "data.dataset: must be a data set id"),
        ({"data": {"path": "a"}, "surprise": 1}, "surprise: Extra inputs are not permitted"),
        (
            {"data": {"path": "a", "image_size": 16}, "backbone": {"name": "densenet121"}},
            "data.image_size: 16 px is below the 29 px",
        ),
        (
            {"data": {"path": "a", "image_size": 40}, "backbone": {"name": "vit_b_16"}},
            "data.image_size: vit_b_16 needs a multiple of 16",
        ),
        (
            {"data": {"path": "a"}, "scheduler": {"name": "multistep", "milestones": [2, 1]}},
            "scheduler.milestones: must be strictly increasing",
        ),
        (
            {"data": {"path": "a"}, "scheduler": {"name": "multistep", "milestones": [1, 5]}},
            "scheduler.milestones: milestone 5 is never reached",
        ),
        (
            {
                "data": {"path": "a"},
                "scheduler": {"name": "multistep", "milestones": [1, 2], "warmup_epochs": 1},
            },
            "scheduler.milestones: milestone 1 falls inside",
        ),
        (
            {"data": {"path": "a"}, "scheduler": {"name": "cosine", "warmup_epochs": 3}},
            "scheduler.warmup_epochs: warmup of 3 epochs must be shorter",
        ),
        (
            {"data": {"path": "a"}, "scheduler": {"name": "cosine", "warmup_steps": 5, "interval": "epoch"}},
            "scheduler.warmup_steps: warmup_steps needs interval: step",
        ),
        (
            {"data": {"path": "a"}, "scheduler": {"name": "onecycle", "warmup_epochs": 1}},
            "scheduler.warmup_epochs: onecycle warms up by itself",
        ),
        (
            {"data": {"path": "a"}, "optimizer": {"name": "sgd", "nesterov": True, "momentum": 0.0}},
            "optimizer.nesterov: nesterov needs momentum",
        ),
        ({"data": {"path": "a"}, "optimizer": {"name": "adam", "betas": [0.9, 1.5]}}, "optimizer.betas.1"),
        (
            {"data": {"path": "a"}, "optimizer": {"name": "lion"}},
            "optimizer: name must be one of sgd, adam, adamw, rmsprop",
        ),
        ({"data": {"path": "a"}, "clipping": {"mode": "norm", "norm_type": 3}}, "clipping.norm_type"),
        (
            {"data": {"path": "a"}, "backbone": {"name": "resnet81"}},
            "backbone.name: unknown backbone 'resnet81'; did you mean resnet18",
        ),
        (
            {"data": {"path": "a"}, "backbone": {"weights": "IMAGENET9K"}},
            "backbone.weights: resnet18 has no weights 'IMAGENET9K'",
        ),
        (
            {"data": {"path": "a"}, "backbone": {"dropout": 0.3}},
            "backbone.dropout: resnet18 has no dropout layers",
        ),
        (
            {"data": {"path": "a"}, "backbone": {"stochastic_depth": 0.1}},
            "backbone.stochastic_depth: the torchvision builder",
        ),
        (
            {"data": {"path": "a"}, "backbone": {"freeze": {"strategy": "stages", "frozen_stages": 6}}},
            "backbone.freeze.frozen_stages: resnet18 has 5 stages",
        ),
        (
            {"data": {"path": "a"}, "backbone": {"freeze": {"strategy": "gradual", "unfreeze_at": [1, 5]}}},
            "backbone.freeze.unfreeze_at: epoch 5 is never reached",
        ),
        (
            {"data": {"path": "a"}, "regularization": {"mixup": {"mixup_alpha": 0}}},
            "regularization.mixup.mixup_alpha: set mixup_alpha",
        ),
        (
            {"data": {"path": "a"}, "regularization": {"label_smoothing": 1.0}},
            "regularization.label_smoothing",
        ),
        ({"data": {"path": "a"}, "training": {"max_runtime": -5}}, "training.max_runtime: must be positive"),
    ],
)
def test_bad_specs_name_the_field_and_the_reason(data, expected):
    lines = problems(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_defaults_that_depend_on_the_monitor_are_resolved():
    spec = Spec.model_validate(
        {
            "data": {"path": "a"},
            "scheduler": {"name": "plateau", "monitor": "val_acc"},
            "regularization": {"early_stopping": {"monitor": "val_loss"}},
        }
    )
    assert spec.scheduler.mode == "max"
    assert spec.regularization.early_stopping.mode == "min"


def test_native_image_size_is_the_backbones_own():
    spec = Spec.model_validate({"data": {"path": "a", "image_size": "native"}, "backbone": {"name": "efficientnet_b3"}})
    assert spec.image_size == 300


def test_the_json_schema_names_every_model():
    schema = spec_json_schema()
    names = set(schema["$defs"])
    for expected in (
        "BackboneSpec",
        "DataSpec",
        "SGDOptimizer",
        "CosineSchedule",
        "ClipAGC",
        "FreezeGradual",
        "MixupSpec",
    ):
        assert expected in names
    assert schema["title"] == "Spec"


def test_the_spec_module_imports_no_torch():
    code = "import sys, training.spec, training.catalog; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_divergence_guard_is_refused_in_a_multi_process_job():
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(
            {"data": {"path": "/data"}, "training": {"devices": 2, "divergence": {"action": "rollback"}}}
        )
    [error] = caught.value.errors()
    assert error["loc"] == ("training", "divergence") and "single-process" in error["msg"]
