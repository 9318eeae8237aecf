"""Freezing: frozen parameters are bit-identical after training, batch-norm statistics stay, and
gradual unfreezing changes the trainable set at the given epochs with the scheduled learning rate."""

from __future__ import annotations

import torch

from tests.training.conftest import tiny_spec
from training.backbones import build_model
from training.checkpoint import load_checkpoint
from training.dryrun import preview_lr
from training.engine import Trainer
from training.freezing import FreezePlan
from training.spec import BackboneSpec, FreezeGradual

STATS = ("running_mean", "running_var", "num_batches_tracked")


def train(colour_set, tmp_path, freeze: dict, epochs: int = 2, **sections) -> tuple[dict, Trainer]:
    torch.manual_seed(0)
    spec = tiny_spec(
        colour_set,
        backbone={"freeze": freeze},
        training={"epochs": epochs, "keep_checkpoints": "all", "log_every_steps": 50},
        **sections,
    )
    trainer = Trainer(spec, tmp_path)
    trainer.fit()
    return trainer.parts.built.model.state_dict(), trainer


def initial_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The weights the run started from: the same seed builds the same model."""
    torch.manual_seed(trainer.spec.training.seed)
    return build_model(trainer.spec.backbone, 3, 16).model.state_dict()


def changed(before: dict, after: dict, key: str) -> bool:
    return not torch.equal(before[key], after[key].cpu())


def test_linear_probe_changes_only_the_head(colour_set, tmp_path):
    after, trainer = train(colour_set, tmp_path, {"strategy": "linear_probe"})
    before = initial_state(trainer)
    for key in before:
        if key.startswith("fc."):
            assert changed(before, after, key), key
        else:
            assert not changed(before, after, key), key  # weights and batch-norm statistics alike


def test_frozen_stages_stay_bit_identical_and_the_rest_trains(colour_set, tmp_path):
    after, trainer = train(colour_set, tmp_path, {"strategy": "stages", "frozen_stages": 2})
    before = initial_state(trainer)
    built = trainer.parts.built
    for key in before:
        stage = built.stage_of(key.rsplit(".", 1)[0] + ".weight") if key.endswith(STATS) else built.stage_of(key)
        if stage < 2:
            assert not changed(before, after, key), key
    assert changed(before, after, "layer2.0.conv1.weight") and changed(before, after, "layer2.0.bn1.running_mean")


def test_freeze_bn_keeps_running_statistics_and_affine_weights(colour_set, tmp_path):
    after, trainer = train(colour_set, tmp_path, {"strategy": "none", "freeze_bn": True})
    before = initial_state(trainer)
    bn_keys = [k for k in before if ".bn" in k or k.startswith("bn1") or ".downsample.1." in k]
    assert bn_keys
    for key in bn_keys:
        assert not changed(before, after, key), key
    assert changed(before, after, "layer1.0.conv1.weight")


def test_gradual_unfreezing_changes_the_trainable_set_at_the_given_epochs(colour_set, tmp_path):
    freeze = {"strategy": "gradual", "unfreeze_at": [1, 2]}
    _, trainer = train(colour_set, tmp_path, freeze, epochs=3, optimizer={"backbone_lr_mult": 0.5})
    plan = FreezePlan(trainer.parts.built, FreezeGradual(unfreeze_at=[1, 2]))
    assert plan.trainable_stages(0) == {5}
    assert plan.trainable_stages(1) == {4, 5}  # from the head down: layer4 first
    assert plan.trainable_stages(2) == {3, 4, 5}

    before = initial_state(trainer)
    epochs = [load_checkpoint(tmp_path / "checkpoints" / f"epoch-00{e}.pt")["model"] for e in (1, 2, 3)]
    # After epoch 1 only the head moved; after epoch 2 layer4 too; after epoch 3 layer3 too.
    assert changed(before, epochs[0], "fc.weight") and not changed(before, epochs[0], "layer4.0.conv1.weight")
    assert changed(before, epochs[1], "layer4.0.conv1.weight")
    assert not changed(before, epochs[1], "layer3.0.conv1.weight")
    assert changed(before, epochs[2], "layer3.0.conv1.weight")
    assert not changed(before, epochs[2], "layer2.0.conv1.weight")
    assert not changed(before, epochs[2], "bn1.running_mean")
    # A frozen stage's batch norm kept its statistics while the head trained above it.
    assert not changed(before, epochs[0], "layer4.1.bn2.running_var")
    trainables = [h["trainable_params"] for h in trainer.state.history]
    assert trainables[0] < trainables[1] < trainables[2]

    # The unfrozen groups train at the learning rate the schedule gives them, as the preview shows.
    preview = preview_lr(trainer.spec, trainer.parts.plan.steps_per_epoch)
    last = dict(zip(preview.groups, preview.lr[-1], strict=True))
    assert last["stage3"] is not None and last["stage2"] is None
    for group in trainer.parts.optimizer.param_groups:
        if last[group["name"]] is not None:
            assert group["lr"] == last[group["name"]]
    assert last["stage4"] == 0.5 * last["head"]


def test_frozen_parts_are_in_eval_mode_while_training():
    built = build_model(BackboneSpec(name="resnet18"), 3, 16, empty=True)
    plan = FreezePlan(built, FreezeGradual(unfreeze_at=[1]))
    plan.set_train_mode(0)
    assert built.model.fc.training and not built.model.layer4.training and not built.model.bn1.training
    plan.set_train_mode(1)
    assert built.model.layer4.training and not built.model.layer3.training
