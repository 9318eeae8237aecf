"""The fit loop: metrics, callbacks, checkpoints and exact resume, published weights, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from tests.training.conftest import CLASSES, tiny_spec
from training.callbacks import Callbacks, Stop
from training.engine import Trainer
from training.errors import NonFiniteLoss
from training.export import load_exported


class Recorder(Callbacks):
    def __init__(
        self, stop_at_step: int | None = None, stop: Stop = Stop.PREEMPT, crash_after_epoch: int | None = None
    ):
        self.steps, self.epochs, self.checkpoints, self.started = [], [], [], []
        self.stop_at_step, self.stop, self.crash_after_epoch = stop_at_step, stop, crash_after_epoch

    def on_start(self, info):
        self.started.append(info)

    def on_step(self, metrics):
        self.steps.append(metrics)

    def on_epoch(self, metrics):
        self.epochs.append(metrics)
        if self.crash_after_epoch == metrics["epoch"]:
            raise KeyboardInterrupt("the worker died")

    def on_checkpoint(self, info):
        self.checkpoints.append(info)

    def should_stop(self):
        if self.stop_at_step is not None and self.steps and self.steps[-1].step >= self.stop_at_step:
            return self.stop
        return None


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_reports_metrics_and_publishes_weights_torchvision_loads(colour_set, tmp_path):
    recorder = Recorder()
    result = Trainer(tiny_spec(colour_set), tmp_path, callbacks=recorder).fit()

    assert result.status == "completed" and result.epochs_completed == 2
    info = recorder.started[0]
    assert info.class_names == list(CLASSES) and info.images == {"train": 54, "val": 18, "test": 18}
    assert info.steps_per_epoch == 7 and info.total_steps == 14  # 54 images, batches of 8
    assert [m.step for m in recorder.steps] == list(range(1, 15))
    epoch = recorder.epochs[-1]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"):
        assert key in epoch
    assert "val_acc_top5" not in epoch  # three classes
    assert [e["epoch"] for e in recorder.epochs] == [1, 2]
    assert result.test is not None and set(result.test) == {"test_loss", "test_acc"}

    # The weights load into torchvision's own model, strictly, and predict as the run measured.
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["class_names"] == list(CLASSES) and card["input_size"] == 16
    assert card["torchvision_kwargs"] == {"num_classes": 3} and card["head"]["plain"]
    model = torchvision.models.get_model("resnet18", **card["torchvision_kwargs"])
    model.load_state_dict(weights(tmp_path), strict=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["published"]["test_acc"] == result.test["test_acc"]

    # The confusion matrices of the published weights: rows are the true classes (six images of each), and
    # their diagonals give exactly the accuracies the run reports.
    confusion = json.loads((tmp_path / "confusion.json").read_text())
    assert confusion["class_names"] == list(CLASSES)
    for split, accuracy in (("val", result.final["val_acc"]), ("test", result.test["test_acc"])):
        matrix = confusion[split]["matrix"]
        assert [sum(row) for row in matrix] == [6, 6, 6] and confusion[split]["images"] == 18
        assert sum(matrix[i][i] for i in range(3)) / 18 == accuracy
        assert confusion[split]["per_class_accuracy"] == [matrix[i][i] / 6 for i in range(3)]


def test_checkpoints_keep_the_best_and_the_last(colour_set, tmp_path):
    recorder = Recorder()
    spec = tiny_spec(colour_set, training={"epochs": 4, "log_every_steps": 50})
    Trainer(spec, tmp_path, callbacks=recorder).fit()
    on_disk = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    best = next(c for c in reversed(recorder.checkpoints) if c.is_best)
    assert on_disk == sorted({"epoch-004.pt", best.path.name})
    removed = [p.name for c in recorder.checkpoints for p in c.removed]
    assert set(removed) | set(on_disk) == {f"epoch-00{i}.pt" for i in range(1, 5)}


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(colour_set, tmp_path):
    spec = tiny_spec(colour_set, regularization={"label_smoothing": 0.1}, backbone={"head": {"dropout": 0.2}})
    straight = Trainer(spec, tmp_path / "straight").fit()

    with pytest.raises(KeyboardInterrupt):
        Trainer(spec, tmp_path / "crashed", callbacks=Recorder(crash_after_epoch=1)).fit()
    checkpoint = tmp_path / "crashed" / "checkpoints" / "epoch-001.pt"
    resumed = Trainer(spec, tmp_path / "crashed").fit(resume_from=checkpoint)

    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "crashed"))
    timing = {"epoch_seconds", "images_per_second"}
    untimed = [[{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in (straight, resumed)]
    assert untimed[0] == untimed[1]  # the resumed run carries the first epoch's record over


def test_preempted_mid_epoch_run_resumes_to_the_same_weights(colour_set, tmp_path):
    """2 + 5 steps, resumed from a checkpoint inside the first epoch, equal 7 straight steps."""
    spec = tiny_spec(colour_set, training={"epochs": 1})
    Trainer(spec, tmp_path / "straight").fit()

    stopped = Trainer(spec, tmp_path / "preempted", callbacks=Recorder(stop_at_step=2)).fit()
    assert stopped.status == "preempted" and stopped.checkpoint_path.name == "epoch-000-step-0000002.pt"
    assert not (tmp_path / "preempted" / "model.safetensors").exists()
    Trainer(spec, tmp_path / "preempted").fit(resume_from=stopped.checkpoint_path)

    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "preempted"))


def test_bf16_autocast_trains_on_the_cpu(colour_set, tmp_path):
    recorder = Recorder()
    # A few steps: a CPU without native bf16 emulates it, tens of times slower than fp32.
    spec = tiny_spec(colour_set, training={"precision": "bf16", "epochs": 1, "max_steps": 3})
    result = Trainer(spec, tmp_path, callbacks=recorder).fit()
    assert recorder.started[0].precision == "bf16" and len(result.history) == 1
    assert all(torch.isfinite(torch.tensor([h["train_loss"], h["val_loss"]])).all() for h in result.history)
    assert result.weights_path.is_file()


def test_auto_precision_stays_fp32_for_deterministic_cpu_runs(colour_set):
    from training.runtime import resolve_runtime

    deterministic = tiny_spec(colour_set, training={"precision": "auto", "deterministic": True})
    assert resolve_runtime(deterministic).precision == "fp32"


def test_cancel_stops_at_the_next_step_without_publishing(colour_set, tmp_path):
    recorder = Recorder(stop_at_step=3, stop=Stop.CANCEL)
    result = Trainer(tiny_spec(colour_set), tmp_path, callbacks=recorder).fit()
    assert result.status == "cancelled" and result.steps == 3
    assert not (tmp_path / "model.safetensors").exists()


def test_max_steps_ends_the_run_early_and_still_publishes(colour_set, tmp_path):
    result = Trainer(tiny_spec(colour_set, training={"max_steps": 3}), tmp_path).fit()
    assert result.status == "max_steps" and result.steps == 3 and result.epochs_completed == 1
    assert (tmp_path / "model.safetensors").is_file()


def test_a_non_finite_loss_stops_the_run_naming_its_step(colour_set, tmp_path):
    """The step is exact whether the host looks every step or only every 50."""
    found = []
    for every in (1, 50):
        spec = tiny_spec(colour_set, optimizer={"lr": 1e12}, training={"log_every_steps": every, "epochs": 3})
        with pytest.raises(NonFiniteLoss) as caught:
            Trainer(spec, tmp_path / str(every)).fit()
        assert caught.value.code == "non_finite_loss"
        assert f"step {caught.value.step}" in str(caught.value)
        found.append(caught.value.step)
    assert found[0] == found[1] and found[0] >= 1


def test_gradient_accumulation_equals_the_bigger_batch(colour_set, tmp_path):
    """With the backbone frozen (no batch-norm statistics at play) and no augmentation,
    two accumulated batches of 8 are one batch of 16: the same images, the same update."""
    common = {"freeze": {"strategy": "linear_probe"}}
    data = {"val_split": 1 / 3, "augment": {"hflip": False, "random_crop": False}}  # 48 train images
    big = tiny_spec(colour_set, backbone=common, data={**data, "batch_size": 16}, training={"epochs": 1})
    small = tiny_spec(
        colour_set, backbone=common, data={**data, "batch_size": 8}, training={"epochs": 1, "grad_accum_steps": 2}
    )
    assert Trainer(big, tmp_path / "big").fit().steps == Trainer(small, tmp_path / "small").fit().steps == 3
    a, b = weights(tmp_path / "big"), weights(tmp_path / "small")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_custom_head_is_rebuilt_from_the_model_card(colour_set, tmp_path):
    spec = tiny_spec(colour_set, backbone={"head": {"hidden": [32], "dropout": 0.1}}, training={"epochs": 1})
    result = Trainer(spec, tmp_path).fit()
    model = load_exported(result.card_path, result.weights_path)
    assert isinstance(model.fc, torch.nn.Sequential)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_init_from_an_earlier_run_takes_its_weights_and_normalization(colour_set, tmp_path):
    first = Trainer(tiny_spec(colour_set, training={"epochs": 1}), tmp_path / "first").fit()
    spec = tiny_spec(
        colour_set, backbone={"init_from": str(first.weights_path)}, training={"epochs": 1, "max_steps": 1}
    )
    trainer = Trainer(spec, tmp_path / "second")
    trainer.fit()
    card = json.loads(first.card_path.read_text())
    assert list(trainer.parts.data.mean) == card["preprocessing"]["mean"]


def test_a_set_too_big_for_memory_streams_from_disk_with_the_same_result(colour_set, tmp_path):
    """in_memory: false streams through DataLoader workers; a seeded run is the same with 0 or 2 workers."""
    runs = {}
    for workers in (0, 2):
        spec = tiny_spec(colour_set, data={"in_memory": False, "num_workers": workers}, training={"epochs": 1})
        trainer = Trainer(spec, tmp_path / str(workers))
        result = trainer.fit()
        assert not trainer.parts.data.in_memory and result.status == "completed"
        runs[workers] = weights(tmp_path / str(workers))
    assert_same_weights(runs[0], runs[2])


def test_a_stop_asked_during_the_setup_ends_the_run_before_it_trains(colour_set, tmp_path):
    class StopAtOnce(Callbacks):
        def __init__(self):
            self.asked = 0

        def should_stop(self):
            self.asked += 1
            return Stop.CANCEL if self.asked >= 2 else None  # after the data, before the model

    trainer = Trainer(tiny_spec(colour_set), tmp_path, callbacks=StopAtOnce())
    result = trainer.fit()
    assert result.status == "cancelled" and result.steps == 0
    assert trainer.callbacks.asked == 2  # stopped at the check after the data, before the model
    with pytest.raises(RuntimeError):  # the run has no parts: nothing was handed to the loop
        trainer.parts  # noqa: B018  (reading it raises)
