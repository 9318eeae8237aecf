"""The divergence guard (``training.divergence``): a run whose loss blows up goes back and tries slower.

After every optimizer step the guard reads that step's loss (one host sync per step: the price of catching
a spike before the next step builds on it). A step is bad when its loss is not finite, or when it is above
``spike_factor`` times the average of the last ``window_steps`` good steps. A good step joins the average,
and every ``snapshot_every_steps`` steps (and at each epoch's start) the guard copies the whole training
state in memory, on the device: model, optimizer, schedule, scaler, EMA, clipper, loop position, RNGs.

On a bad step, ``action: stop`` fails the run naming the step; ``action: rollback`` restores the snapshot,
multiplies the learning rate of every parameter group by ``lr_factor`` (the schedule's own copies too, so
that it keeps the cut), tells the callbacks, and the epoch goes on from the snapshot's batch. After
``max_rollbacks`` rollbacks the next bad step fails the run with the history in the message.

Every batch and augmentation is seeded by (seed, epoch, batch) and the snapshot holds the RNGs, so a run
with rollbacks is as deterministic as one without. Checkpoints carry the guard's record, and one written
inside an epoch (a preemption, a pause) also carries the snapshot: a resumed run rolls back to the same
state the uninterrupted one would.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from training.callbacks import RollbackInfo
from training.errors import Diverged
from training.schedule import LRSchedule
from training.spec import DivergenceSpec

if TYPE_CHECKING:
    from training.engine import Trainer

# Spikes are measured against an average of at least this many good steps. One is enough: a loss that
# jumps to spike_factor times the last good one early in a run is a run blowing up, not noise.
MIN_AVERAGE_STEPS = 1
# Optimizer param-group entries that hold a learning rate (OneCycleLR keeps its peak and floor there).
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


class DivergenceGuard:
    def __init__(self, spec: DivergenceSpec, trainer: Trainer) -> None:
        self.spec = spec
        self.trainer = trainer
        self.recent: deque[float] = deque(maxlen=spec.window_steps)
        self.history: list[dict[str, Any]] = []  # one record per rollback
        self.snapshot: dict[str, Any] | None = None

    # --- the hooks the loop calls ---------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """At the start of each pass over an epoch: a rollback never crosses an epoch's start."""
        if self.snapshot is None or self.snapshot["state"]["epoch"] != epoch:
            self._take_snapshot()

    def after_step(self, epoch: int) -> bool:
        """Check the step just taken. True when the run was rolled back: the epoch restarts from the
        snapshot's position. Raises ``Diverged`` when the guard gives up."""
        trainer = self.trainer
        # A host sync, every step (see the module docstring).
        tally = trainer.state.tally
        first_bad, loss = torch.stack([tally.first_bad_step.double(), tally.last_loss.double()]).tolist()
        step = trainer.state.step
        average = sum(self.recent) / len(self.recent) if self.recent else None
        if first_bad >= 0 or not math.isfinite(loss):
            reason = "non_finite"
        elif (
            self.spec.spike_factor is not None
            and average is not None
            and len(self.recent) >= min(MIN_AVERAGE_STEPS, self.spec.window_steps)
            and loss > self.spec.spike_factor * average
        ):
            reason = "spike"
        else:
            self.recent.append(loss)
            if step % self.spec.snapshot_every_steps == 0:
                self._take_snapshot()
            return False
        self._roll_back(step, epoch, loss, reason, average)
        return True

    # --- rolling back ----------------------------------------------------------------------------

    def _roll_back(self, step: int, epoch: int, loss: float, reason: str, average: float | None) -> None:
        what = f"loss {loss:.4g}" + (f", {loss / average:.1f}x its recent average {average:.4g}" if average else "")
        if reason == "non_finite":
            what = f"non-finite loss ({loss})"
        if self.spec.action == "stop" or len(self.history) >= self.spec.max_rollbacks:
            raise Diverged(self._failure(step, epoch, what), step=step, epoch=epoch + 1, history=self.history)
        assert self.snapshot is not None  # taken at the start of every epoch
        trainer = self.trainer
        cuts = len(self.history) + 1
        self._restore_snapshot()
        # The snapshot's rates already carry the cuts made before it was taken.
        parts = trainer.parts
        scale_learning_rates(parts.optimizer, parts.schedule, self.spec.lr_factor ** (cuts - self.snapshot["cuts"]))
        lr = float(parts.optimizer.param_groups[0]["lr"])
        trainer.state.step_lr = lr
        info = RollbackInfo(
            step=step,
            epoch=epoch + 1,
            loss=loss,
            reason=reason,
            average=average,
            back_to_step=trainer.state.step,
            lr=lr,
            rollback=cuts,
        )
        self.history.append(info.to_dict())
        trainer.callbacks.on_rollback(info)

    def _failure(self, step: int, epoch: int, what: str) -> str:
        message = f"the run diverged at optimizer step {step} (epoch {epoch + 1}): {what}"
        if self.spec.action == "stop":
            return message + "; lower optimizer.lr, add clipping, or use training.divergence.action: rollback"
        tried = "; ".join(
            f"step {r['step']}: loss {r['loss']:.4g}, back to step {r['back_to_step']}, lr {r['lr']:.3g}"
            for r in self.history
        )
        return f"{message}, after {len(self.history)} rollbacks ({tried}); lower optimizer.lr or add clipping"

    def _take_snapshot(self) -> None:
        trainer = self.trainer
        tally = trainer.state.tally
        sums = torch.stack([tally.pass_loss.double(), tally.pass_correct.double()]).tolist()
        state = copy.deepcopy(trainer.checkpoint_state())  # tensors are cloned, on their device
        self.snapshot = {**state, "device_sums": sums, "recent": list(self.recent), "cuts": len(self.history)}

    def _restore_snapshot(self) -> None:
        trainer, snapshot = self.trainer, self.snapshot
        assert snapshot is not None
        trainer.restore(copy.deepcopy(snapshot))
        # The epoch's device sums up to the snapshot move to the host record; the epoch restarts them at zero.
        loss, correct = snapshot["device_sums"]
        trainer.state.sums.loss += loss
        trainer.state.sums.correct += correct
        trainer.state.tally.first_bad_step.fill_(-1)
        self.recent = deque(snapshot["recent"], maxlen=self.spec.window_steps)

    # --- checkpoints -----------------------------------------------------------------------------

    def state_dict(self, *, mid_epoch: bool) -> dict[str, Any]:
        """The guard's record; inside an epoch, the snapshot too (a resume may need to roll back to it)."""
        return {
            "history": self.history,
            "recent": list(self.recent),
            "snapshot": self.snapshot if mid_epoch else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.recent = deque(state["recent"], maxlen=self.spec.window_steps)
        self.snapshot = state["snapshot"]


def scale_learning_rates(optimizer: torch.optim.Optimizer, schedule: LRSchedule, factor: float) -> None:
    """Multiply the learning rate of every parameter group by ``factor``, and the rates the schedule
    computes from (its base rates and last rates), so that the next scheduler step keeps the cut."""
    for group in optimizer.param_groups:
        for key in LR_KEYS:
            if key in group:
                group[key] = group[key] * factor
    schedulers: list[Any] = [schedule.warmup, schedule.scheduler]
    schedulers += list(getattr(schedule.scheduler, "_schedulers", []))  # SequentialLR's children
    for scheduler in (s for s in schedulers if s is not None):
        if hasattr(scheduler, "base_lrs"):  # SequentialLR has none of its own
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [lr * factor for lr in scheduler._last_lr]
