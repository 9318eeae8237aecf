"""Child processes that should keep running: the embedded mode's workers, one worker per GPU.

Each child runs in a session of its own, so that a Ctrl-C at the terminal reaches only the parent,
which then stops the children in order: SIGTERM (a worker checkpoints its job and hands it back),
then SIGKILL after a grace period. A child that exits on its own is restarted, with a backoff.
A child with a ``log_path`` writes its output (stdout and stderr) there, appended, instead of the terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None  # None: the parent's stdout and stderr
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, children: list[Child], grace_seconds: float = 60.0) -> None:
        self.children = children
        self.grace_seconds = grace_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        self._thread.start()

    def _spawn(self, child: Child) -> None:
        if child.log_path is None:
            child.process = subprocess.Popen(child.argv, env=child.env, start_new_session=True)
        else:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            with child.log_path.open("ab") as log_file:  # the child holds its own descriptor
                child.process = subprocess.Popen(
                    child.argv,
                    env=child.env,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for child in self.children:
                if child.process is None or child.process.poll() is None or self._stopping.is_set():
                    continue
                code = child.process.returncode
                uptime = time.monotonic() - child.started_at
                child.restarts = 0 if uptime > 60 else child.restarts + 1  # a long run resets the backoff
                delay = min(2.0**child.restarts, MAX_BACKOFF_SECONDS)
                log.warning("%s exited with code %s after %.0fs; restarting in %.0fs", child.name, code, uptime, delay)
                if self._stopping.wait(delay):
                    return
                self._spawn(child)

    def stop(self) -> None:
        """SIGTERM every child, wait up to the grace period for them, then SIGKILL the rest."""
        self._stopping.set()
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            # To the child alone: a Celery worker's pool children must hear it from their parent (as a
            # request to checkpoint), not die of it.
            _signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", child.name, self.grace_seconds)
                _signal(child.process, signal.SIGKILL, group=True)
                child.process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool = False) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)  # the child leads its own session: its own children go too
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass
