"""Checkpoint writes that do not stall the loop.

``submit`` copies the checkpoint's state on the loop's thread (tensors to host memory: a memcpy, cheap beside a
step), then serialises it and writes it atomically (``save_checkpoint``: temp file, fsync, rename) on a
background thread, while the loop trains on. One write at a time: the next ``submit`` waits for the previous
one. What follows a write (the retention rule's deletions, the ``on_checkpoint`` callback, which publishes the
file) runs on the loop's thread once the file is complete: at the first ``poll`` after it (the loop polls
between steps), or at ``wait``, which a step report, the run's end, a stop and a failure call: no write is
lost, and a checkpoint is announced before the steps that follow it are reported. A
failed write raises its own error on the loop's thread, at that poll or wait: the run fails with it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from training import checkpoint


def host_copy(value: Any) -> Any:
    """A copy of a checkpoint's state that the loop cannot change any more: every tensor copied to host memory
    (from any device), every container rebuilt; other values (numbers, strings) deep-copied."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [host_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(host_copy(item) for item in value)
    return copy.deepcopy(value)


class CheckpointWriter:
    """At most one checkpoint write in flight, on a background thread; its follow-up on the loop's thread."""

    def __init__(self) -> None:
        self._pending: tuple[Future[None], Callable[[], None]] | None = None

    @property
    def pending(self) -> bool:
        """A write was submitted and its follow-up has not run yet."""
        return self._pending is not None

    def submit(self, path: Path, state: dict[str, Any], then: Callable[[], None]) -> None:
        """Write ``state`` to ``path`` in the background (after the previous write and its follow-up); ``then``
        runs on the loop's thread once the file is complete."""
        self.wait()
        snapshot = host_copy(state)
        future: Future[None] = Future()

        def write() -> None:
            try:
                # Looked up at each write: tests wrap it (a slow or failing disk).
                checkpoint.save_checkpoint(path, snapshot)
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(None)

        threading.Thread(target=write, name=f"checkpoint-writer {path.name}", daemon=True).start()
        self._pending = (future, then)

    def poll(self) -> None:
        """Between steps: when the pending write has finished, raise its failure or run its follow-up."""
        if self._pending is not None and self._pending[0].done():
            self._complete()

    def wait(self) -> None:
        """Wait for the pending write, if any, then raise its failure or run its follow-up."""
        if self._pending is not None:
            self._complete()

    def _complete(self) -> None:
        assert self._pending is not None
        future, then = self._pending
        self._pending = None
        future.result()  # waits; re-raises the writer's own error here, on the loop's thread
        then()
