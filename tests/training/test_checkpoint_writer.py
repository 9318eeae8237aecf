"""Checkpoints written in the background: the loop trains on during a slow write, a failed write fails the run,
and a resume from a checkpoint written while the loop went on is exact."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_spec
from tests.training.test_engine import assert_same_weights, weights
from training import checkpoint
from training.callbacks import Callbacks
from training.checkpoint_writer import host_copy
from training.engine import Trainer

RELEASE_AFTER_STEPS = 2  # optimizer steps of epoch 2
GENEROUS = 300.0  # seconds: a loaded machine is slow, a stalled loop never gets there


class Timeline(Callbacks):
    """What happened, in order; releases the held write once the loop has taken ``RELEASE_AFTER_STEPS`` steps
    of epoch 2 (``should_stop`` is asked after every optimizer step)."""

    def __init__(self, release: threading.Event) -> None:
        self.events: list[tuple[str, int]] = []
        self.release = release

    def should_stop(self):
        if ("epoch", 1) in self.events and not self.release.is_set():
            self.events.append(("step of epoch 2", 0))
            if self.events.count(("step of epoch 2", 0)) >= RELEASE_AFTER_STEPS:
                self.release.set()
        return None

    def on_step(self, metrics):
        self.events.append(("step", metrics.step))

    def on_epoch(self, metrics):
        self.events.append(("epoch", metrics["epoch"]))

    def on_checkpoint(self, info):
        assert info.path.is_file()  # complete when announced: the worker uploads it from here
        self.events.append(("checkpoint", info.epoch))


def test_the_loop_trains_on_while_a_checkpoint_is_slowly_written_and_the_resume_is_exact(
    colour_set, tmp_path, monkeypatch
):
    # No step reports: a report waits for the pending write (the checkpoint is announced before the steps after it).
    spec = tiny_spec(colour_set, training={"keep_checkpoints": "all", "log_every_steps": 50})
    release = threading.Event()
    held: list[bool] = []
    save = checkpoint.save_checkpoint

    def slow_save(path: Path, state: dict) -> None:
        if path.name == "epoch-001.pt":  # a disk that takes until epoch 2 is under way
            held.append(release.wait(GENEROUS))
        save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    timeline = Timeline(release)
    result = Trainer(spec, tmp_path / "slow", callbacks=timeline).fit()

    assert held == [True]  # released by the loop's own progress: it did not wait for the write
    events = timeline.events
    steps_of_two = [i for i, event in enumerate(events) if event == ("step of epoch 2", 0)]
    assert len(steps_of_two) == RELEASE_AFTER_STEPS
    assert events.index(("epoch", 1)) < steps_of_two[-1] < events.index(("checkpoint", 1))
    assert events[-1] == ("checkpoint", 2)  # the run's end waited for its last write
    assert result.checkpoint_path == tmp_path / "slow" / "checkpoints" / "epoch-002.pt"

    # epoch-001.pt holds the state when it was taken, not the one the loop had moved on to while it was written:
    # epoch 2 resumed from it ends with the very weights of the run that wrote it.
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "slow" / "checkpoints" / "epoch-001.pt", resumed / "checkpoints")
    Trainer(spec, resumed).fit(resume_from=resumed / "checkpoints" / "epoch-001.pt")
    assert_same_weights(weights(tmp_path / "slow"), weights(resumed))


def test_a_checkpoint_is_announced_before_the_steps_after_it_are_reported(colour_set, tmp_path, monkeypatch):
    save = checkpoint.save_checkpoint

    def slow_save(path: Path, state: dict) -> None:
        time.sleep(0.5)  # slower than a step of this tiny run: the next report waits for it
        save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    timeline = Timeline(threading.Event())
    Trainer(tiny_spec(colour_set), tmp_path, callbacks=timeline).fit()
    reported = [event for event in timeline.events if event[0] in ("step", "checkpoint")]
    epoch_one, epoch_two = [("step", s) for s in range(1, 8)], [("step", s) for s in range(8, 15)]
    assert reported == [*epoch_one, ("checkpoint", 1), *epoch_two, ("checkpoint", 2)]


def test_a_failed_checkpoint_write_fails_the_run_with_its_error(colour_set, tmp_path, monkeypatch):
    def full_disk(path: Path, state: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    announced: list[object] = []

    class Announced(Callbacks):
        def on_checkpoint(self, info):
            announced.append(info)

    with pytest.raises(OSError, match="No space left on device"):
        Trainer(tiny_spec(colour_set), tmp_path, callbacks=Announced()).fit()
    assert announced == []  # a checkpoint that was not written is never announced
    assert not (tmp_path / "model.safetensors").exists()


def test_the_copy_a_checkpoint_is_written_from_does_not_follow_the_loop():
    weight = torch.ones(3)
    state = {"model": {"w": weight}, "history": [{"epoch": 1}], "pair": (weight, "x")}
    copied = host_copy(state)
    weight.add_(1)
    state["history"].append({"epoch": 2})
    assert torch.equal(copied["model"]["w"], torch.ones(3)) and torch.equal(copied["pair"][0], torch.ones(3))
    assert copied["history"] == [{"epoch": 1}] and copied["pair"][1] == "x"
