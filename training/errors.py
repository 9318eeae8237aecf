"""Errors the engine raises, each with a stable ``code`` the service reports as it is."""

from __future__ import annotations

from typing import Any


class TrainingError(Exception):
    """A run that cannot go on, with a one-line message a person can act on."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class WeightsUnavailable(TrainingError):
    code = "weights_unavailable"


class InitFromError(TrainingError):
    code = "init_from_invalid"


class CheckpointError(TrainingError):
    code = "checkpoint_invalid"


class NonFiniteLoss(TrainingError):
    code = "non_finite_loss"

    def __init__(self, step: int, epoch: int) -> None:
        super().__init__(
            f"the loss became non-finite at optimizer step {step} (epoch {epoch}); "
            "lower optimizer.lr, add clipping, or use precision: fp32"
        )
        self.step = step
        self.epoch = epoch


class Diverged(TrainingError):
    """The divergence guard gave up: ``action: stop``, or more than ``max_rollbacks`` rollbacks."""

    code = "non_finite_loss"

    def __init__(self, message: str, *, step: int, epoch: int, history: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.history = history


class DeviceUnavailable(TrainingError):
    code = "device_unavailable"
