"""Where an attempt's wall time went: its phases, and the publisher's work beside the training thread.

The runner times each phase of an attempt (the claim, the pool child's imports, the inputs' fetch and
extraction, the engine's run, the publisher's drain, the artifacts' upload and hashing, the last write);
the publisher adds the seconds it spent writing events and uploading checkpoints, which overlap the
engine's run (on a CPU host they take cores from it). The breakdown goes into an ``info`` event written
with the job's end, and into the worker's log: an operator sees what the service cost a job, and
``bench/service_bench.py`` reads it to compare a job through the service with the engine's CLI.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


class AttemptTimings:
    """Seconds per phase, in the order the phases began; counters of the publisher's work. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phases: dict[str, float] = {}
        self.background: dict[str, float] = {}  # the publisher's busy seconds and counts, by kind

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add_phase(name, time.monotonic() - started)

    def add_phase(self, name: str, seconds: float) -> None:
        with self._lock:
            self.phases[name] = self.phases.get(name, 0.0) + seconds

    def count(self, name: str, amount: int = 1, seconds: float | None = None) -> None:
        """``amount`` more of the background work ``name`` (items, bytes), and the ``seconds`` it took."""
        with self._lock:
            self.background[name] = self.background.get(name, 0) + amount
            if seconds is not None:
                self.background[f"{name}_seconds"] = self.background.get(f"{name}_seconds", 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phases_seconds": {name: round(seconds, 4) for name, seconds in self.phases.items()},
                "background": {
                    name: round(value, 4) if isinstance(value, float) else value
                    for name, value in self.background.items()
                },
            }

    def summary(self) -> str:
        """One line: ``claim 0.01 s, inputs 0.20 s, ...``."""
        with self._lock:
            return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.phases.items())
