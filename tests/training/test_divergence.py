"""The divergence guard: a run that blows up rolls back and goes on slower, or stops naming the step."""

from __future__ import annotations

import math

import pytest

from tests.training.conftest import tiny_spec
from tests.training.test_engine import Recorder, assert_same_weights, weights
from training.callbacks import Stop
from training.engine import Trainer
from training.errors import Diverged
from training.optim import build_optimizer, plan_param_groups
from training.schedule import LRSchedule
from training.spec import Spec

# SGD at this rate sends resnet18's loss on the colour set from 1.07 to 7e4 at step 2 and to inf at step 6
# of the first epoch's 7; a millionth of it trains.
DIVERGING = {"name": "sgd", "lr": 1000.0, "momentum": 0.9}
GUARD = {"action": "rollback", "lr_factor": 0.001, "max_rollbacks": 3, "snapshot_every_steps": 2}


class RollbackRecorder(Recorder):
    def __init__(self, preempt_after_rollback: bool = False):
        super().__init__()
        self.rollbacks = []
        self.preempt_after_rollback = preempt_after_rollback

    def on_rollback(self, info):
        self.rollbacks.append(info)

    def should_stop(self):
        """With ``preempt_after_rollback``: at the first step after the first rollback."""
        if self.preempt_after_rollback and self.rollbacks and self.steps[-1].step > self.rollbacks[0].back_to_step:
            return Stop.PREEMPT
        return None


def diverging_spec(colour_set, **guard):
    return tiny_spec(colour_set, optimizer=DIVERGING, training={"epochs": 1, "divergence": {**GUARD, **guard}})


def test_rollbacks_carry_a_diverging_run_to_a_finite_end_and_resume_exactly(colour_set, tmp_path):
    recorder = RollbackRecorder()
    result = Trainer(diverging_spec(colour_set), tmp_path / "straight", callbacks=recorder).fit()

    assert result.status == "completed" and result.epochs_completed == 1
    assert all(math.isfinite(v) for epoch in result.history for k, v in epoch.items() if "loss" in k)
    assert result.final is not None and math.isfinite(result.final["val_loss"])
    assert recorder.rollbacks, "the spec was meant to diverge"
    first = recorder.rollbacks[0]
    assert first.epoch == 1 and first.rollback == 1 and first.back_to_step < first.step
    assert first.reason == "spike" and first.loss > 5 * first.average
    # Each rollback cuts the rate by lr_factor; the epoch ended at the cut rate.
    cuts = [1000.0 * 0.001**i for i in range(1, len(recorder.rollbacks) + 1)]
    assert [r.lr for r in recorder.rollbacks] == pytest.approx(cuts)
    assert result.history[-1]["lr"] == pytest.approx(cuts[-1])
    # The epoch went on from where the guard went back to: its step count is the plain run's.
    assert result.steps == 7

    # Preempted just after its first rollback, inside the epoch, it resumes to the same weights: the
    # snapshot it may roll back to again travels in the mid-epoch checkpoint.
    stopped_recorder = RollbackRecorder(preempt_after_rollback=True)
    spec = diverging_spec(colour_set)
    stopped = Trainer(spec, tmp_path / "stopped", callbacks=stopped_recorder).fit()
    assert stopped.status == "preempted" and stopped_recorder.rollbacks == recorder.rollbacks[:1]
    resumed = RollbackRecorder()
    Trainer(spec, tmp_path / "stopped", callbacks=resumed).fit(resume_from=stopped.checkpoint_path)
    assert stopped_recorder.rollbacks + resumed.rollbacks == recorder.rollbacks
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))


def test_action_stop_fails_naming_the_step(colour_set, tmp_path):
    with pytest.raises(Diverged) as caught:
        Trainer(diverging_spec(colour_set, action="stop"), tmp_path / "spike").fit()
    error = caught.value
    assert error.code == "non_finite_loss" and error.epoch == 1 and error.step == 2 and error.history == []
    assert "at optimizer step 2 (epoch 1): loss 6.883e+04" in error.message

    # Watching for non-finite losses only, it stops where the loss overflows.
    with pytest.raises(Diverged) as caught:
        Trainer(diverging_spec(colour_set, action="stop", spike_factor=None), tmp_path / "inf").fit()
    assert caught.value.step == 6 and "at optimizer step 6 (epoch 1): non-finite loss" in caught.value.message


def test_after_max_rollbacks_the_run_fails_with_the_history(colour_set, tmp_path):
    recorder = RollbackRecorder()
    with pytest.raises(Diverged) as caught:
        Trainer(diverging_spec(colour_set, lr_factor=0.9, max_rollbacks=2), tmp_path, callbacks=recorder).fit()
    error = caught.value
    assert len(recorder.rollbacks) == 2 and len(error.history) == 2
    assert "after 2 rollbacks" in error.message
    for rollback in recorder.rollbacks:
        assert f"step {rollback.step}: loss" in error.message


@pytest.mark.parametrize(
    "scheduler",
    [
        {"name": "cosine", "warmup_epochs": 1},
        {"name": "onecycle"},
        {"name": "step", "step_size": 1, "gamma": 0.5},
        {"name": "cosine_restarts", "t_0": 1},
    ],
)
def test_a_rollback_cut_is_kept_by_the_schedule(scheduler):
    """Cutting the rates by half at step 3 halves every later rate the schedule computes."""
    from training.backbones import build_model
    from training.divergence import scale_learning_rates

    spec = Spec.model_validate(
        {"data": {"path": "unused", "image_size": 16}, "scheduler": scheduler, "training": {"epochs": 3}}
    )

    def rates(cut_at: int | None) -> list[float]:
        built = build_model(spec.backbone, 3, 16)
        params = dict(built.model.named_parameters())
        optimizer = build_optimizer(plan_param_groups(built, spec), params, spec)
        schedule = LRSchedule(optimizer, spec, steps_per_epoch=4)
        seen = []
        for step in range(12):
            if step == cut_at:
                scale_learning_rates(optimizer, schedule, 0.5)
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        return seen

    plain, cut = rates(None), rates(3)
    assert cut[:3] == plain[:3]
    assert cut[3:] == pytest.approx([lr * 0.5 for lr in plain[3:]], rel=1e-6)


def test_the_guard_spec_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lr_factor"):
        Spec.model_validate({"data": {"path": "x"}, "training": {"divergence": {"lr_factor": 1.5}}})
    with pytest.raises(ValidationError, match="spike_factor"):
        Spec.model_validate({"data": {"path": "x"}, "training": {"divergence": {"spike_factor": 0.5}}})
