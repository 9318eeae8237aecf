"""Following a job live: its event stream drives a progress bar (epoch and step, loss, accuracy, learning
rate, ETA) and a line per event, until the terminal status event.

``RunProgress`` is what the events say about the run (no I/O); ``JobFollower`` shows it. The bar is
drawn only on a terminal (stderr); elsewhere the step events are printed as lines like the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from app.client.models import EventType, Job, JobEvent, JobStatus
from cli.output import duration, event_line, number

LineMode = Literal["text", "jsonl", "none"]


@dataclass
class RunProgress:
    """A job's run as its events describe it so far."""

    total_epochs: int
    status: str
    epoch: int = 0  # the epoch in progress, 1-based (0: none started yet)
    epochs_done: int = 0
    step: int = 0
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    loss: float | None = None
    acc: float | None = None  # the last epoch's validation accuracy (train accuracy without a val split)
    lr: float | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    window_seconds_per_step: float | None = None
    _last_step: int | None = None

    @classmethod
    def of(cls, job: Job) -> RunProgress:
        return cls(total_epochs=job.progress.total_epochs, status=str(job.status), epochs_done=job.progress.epoch)

    def update(self, event: JobEvent) -> None:
        data = event.data or {}
        if event.type == EventType.STATUS and data.get("to"):
            self.status = str(data["to"])
            if self.status == JobStatus.RUNNING:
                self._last_step = None  # a new attempt: its first report has no window to measure
        elif event.type == EventType.STEP:
            self._take_step(data)
        elif event.type == EventType.EPOCH:
            self._take_epoch(data)

    def _take_step(self, data: dict[str, Any]) -> None:
        step = _int(data.get("step"))
        if step is None:
            return
        elapsed = data.get("elapsed_seconds")
        if self._last_step is not None and step > self._last_step and isinstance(elapsed, int | float):
            self.window_seconds_per_step = elapsed / (step - self._last_step)
        self._last_step = step
        self.step = step
        self.total_steps = _int(data.get("total_steps")) or self.total_steps
        self.steps_per_epoch = _int(data.get("steps_per_epoch")) or self.steps_per_epoch
        self.epoch = _int(data.get("epoch")) or self.epoch
        self.loss = _float(data.get("loss"), self.loss)
        self.lr = _float(data.get("lr"), self.lr)

    def _take_epoch(self, data: dict[str, Any]) -> None:
        epoch = _int(data.get("epoch"))
        if epoch is None:
            return
        self.epochs_done = epoch
        self.epoch = epoch
        if self.steps_per_epoch:
            self.step = max(self.step, epoch * self.steps_per_epoch)
        accuracy = _float(data.get("val_acc"), None)
        self.acc = accuracy if accuracy is not None else _float(data.get("train_acc"), self.acc)
        self.lr = _float(data.get("lr"), self.lr)
        seconds = data.get("epoch_seconds")
        if isinstance(seconds, int | float) and epoch > len(self.epoch_seconds):
            self.epoch_seconds.append(float(seconds))

    @property
    def seconds_per_step(self) -> float | None:
        """From whole epochs once there are some (evaluation included), else from the last step window."""
        if self.epoch_seconds and self.steps_per_epoch:
            return sum(self.epoch_seconds) / len(self.epoch_seconds) / self.steps_per_epoch
        return self.window_seconds_per_step

    @property
    def eta_seconds(self) -> float | None:
        per_step = self.seconds_per_step
        if per_step is None or self.total_steps is None or self.status != JobStatus.RUNNING:
            return None
        return max(self.total_steps - self.step, 0) * per_step

    def describe(self) -> str:
        """The bar's text: loss, accuracy, learning rate, ETA."""
        parts = [f"loss {number(self.loss)}", f"acc {number(self.acc)}", f"lr {number(self.lr)}"]
        eta = self.eta_seconds
        parts.append(f"ETA {duration(eta)}" if eta is not None else self.status)
        return "  ".join(parts)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any, default: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


class JobFollower:
    """Shows a job's events as they arrive: a live bar on ``bar_console`` when it is a terminal, and a line
    per event on ``lines`` (JSON lines with ``line_mode="jsonl"``; step events only feed the bar while it
    is drawn)."""

    def __init__(
        self,
        job: Job,
        *,
        line_mode: LineMode,
        lines: Console,
        bar_console: Console,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.state = RunProgress.of(job)
        self.line_mode = line_mode
        self.echo = echo
        self.live = bar_console.is_terminal
        # Both on one terminal: print the lines through the bar's console, above the bar.
        self.lines = bar_console if self.live and lines.is_terminal else lines
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.fields[total_steps]}"),
            TextColumn("{task.fields[stats]}"),
            console=bar_console,
            transient=True,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> JobFollower:
        if self.live:
            self.bar.start()
            self.task = self.bar.add_task("run", total=None, epoch="-", total_steps="?", stats=self.state.status)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bar.stop()

    def show(self, event: JobEvent) -> None:
        self.state.update(event)
        if self.line_mode == "jsonl":
            self.echo(json.dumps(event.model_dump(mode="json")))
        elif self.line_mode == "text" and not (self.live and event.type == EventType.STEP):
            self.lines.print(event_line(event), soft_wrap=True)
        self._refresh()

    def _refresh(self) -> None:
        if self.task is None:
            return
        state = self.state
        epoch = f"{state.epoch or state.epochs_done}/{state.total_epochs}"
        self.bar.update(
            self.task,
            completed=state.step,
            total=state.total_steps,
            epoch=epoch,
            total_steps=state.total_steps or "?",
            stats=state.describe(),
            refresh=True,  # an event is news: draw it now, not at the next tick
        )
