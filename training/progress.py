"""A rich progress bar for local runs: one bar per epoch, with loss, learning rate and speed."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from training.callbacks import Callbacks, RollbackInfo, RunInfo, StepMetrics


class ConsoleProgress(Callbacks):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[speed]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.info: RunInfo | None = None

    def __enter__(self) -> ConsoleProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.progress.stop()

    def on_start(self, info: RunInfo) -> None:
        self.info = info
        self.console.print(
            f"{info.images.get('train', 0)} train / {info.images.get('val', 0)} val / "
            f"{info.images.get('test', 0)} test images, {len(info.class_names)} classes; "
            f"{info.trainable_params:,} of {info.num_params:,} parameters train; "
            f"{info.steps_per_epoch} steps per epoch on {info.device} ({info.precision})",
            highlight=False,
        )
        for note in info.notes:
            self.console.print(f"note: {note}", highlight=False)
        self._new_epoch(info.start_epoch + 1)

    def _new_epoch(self, epoch: int) -> None:
        assert self.info is not None
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            "train",
            total=self.info.steps_per_epoch,
            epoch=f"{epoch}/{self.info.epochs}",
            loss="-",
            lr="-",
            speed="",
        )

    def on_step(self, metrics: StepMetrics) -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=metrics.step_in_epoch,
                loss=f"{metrics.loss:.4f}",
                lr=f"{metrics.lr:.3g}",
                speed=f"{metrics.images_per_second:.0f} img/s",
            )

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        assert self.info is not None
        parts = [f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f}"]
        for split in ("val", "test"):  # val: none when trained on all of train/; test: when a monitor asks
            if f"{split}_loss" in metrics:
                parts.append(f"{split} loss {metrics[f'{split}_loss']:.4f} acc {metrics[f'{split}_acc']:.3f}")
        parts.append(f"{metrics['epoch_seconds']:.1f}s")
        self.console.print(" | ".join(parts), highlight=False)
        if metrics["epoch"] < self.info.epochs:
            self._new_epoch(metrics["epoch"] + 1)

    def on_rollback(self, info: RollbackInfo) -> None:
        self.console.print(
            f"divergence guard: {info.reason.replace('_', '-')} loss {info.loss:.4g} at step {info.step}; "
            f"rolled back to step {info.back_to_step}, lr now {info.lr:.3g}",
            highlight=False,
        )
