"""Child processes that should keep running: the embedded mode's workers, one worker per GPU.

Each child runs in a session of its own, so that a Ctrl-C at the terminal reaches only the parent,
which then stops the children in order: SIGTERM (a worker checkpoints its job and hands it back),
then SIGKILL after a grace period. A child that exits on its own is restarted, with a backoff.

A parent that is killed outright (SIGKILL, the OOM killer) runs none of that: each child asks Linux for
SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), and a Celery worker's pool children ask the same of
it, so nothing is left running as an orphan. A job its worker was running then loses its lease and is
requeued from its last checkpoint, as after any lost worker.
A child with a ``log_path`` writes its output (stdout and stderr) there, appended, instead of the terminal.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux; None elsewhere).

    libc's ``prctl`` is looked up here, in the parent: between fork and exec the child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return die_with_parent


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
        self._stopped = threading.Event()  # the watcher outlives the children it restarted (PDEATHSIG)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._preexec = die_with_parent_hook()

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        self._thread.start()

    def _spawn(self, child: Child) -> None:
        # PDEATHSIG fires when the *thread* that forked the child exits: children are spawned from the main
        # thread (start) and the watcher (restarts), both of which live as long as the supervisor.
        if child.log_path is None:
            child.process = subprocess.Popen(
                child.argv, env=child.env, start_new_session=True, preexec_fn=self._preexec
            )
        else:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            with child.log_path.open("ab") as log_file:  # the child holds its own descriptor
                child.process = subprocess.Popen(
                    child.argv,
                    env=child.env,
                    start_new_session=True,
                    preexec_fn=self._preexec,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _watch(self) -> None:
        while not self._stopped.wait(1.0):
            if self._stopping.is_set():
                continue
            for child in self.children:
                if child.process is None or child.process.poll() is None or self._stopping.is_set():
                    continue
                code = child.process.returncode
                uptime = time.monotonic() - child.started_at
                child.restarts = 0 if uptime > 60 else child.restarts + 1  # a long run resets the backoff
                delay = min(2.0**child.restarts, MAX_BACKOFF_SECONDS)
                log.warning("%s exited with code %s after %.0fs; restarting in %.0fs", child.name, code, uptime, delay)
                if self._stopping.wait(delay):
                    break
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
        self._stopped.set()
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
