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


class DatasetError(TrainingError):
    """A data set that cannot be used; ``problems`` are one-line reasons a person can act on, naming files.

    ``code`` is ``dataset_invalid`` (layout, classes, unsafe archive) or ``dataset_unreadable`` (images that
    do not decode).
    """

    def __init__(self, code: str, problems: list[str]) -> None:
        self.problems = list(problems) or ["the data set cannot be used"]
        shown = "; ".join(self.problems[:3])
        more = len(self.problems) - 3
        super().__init__(f"{shown} (and {more} more)" if more > 0 else shown, code=code)

    @classmethod
    def invalid(cls, *problems: str) -> DatasetError:
        """A ``dataset_invalid`` error: the layout, the classes or the archive cannot be used."""
        return cls("dataset_invalid", list(problems))


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
