"""``finetune serve`` killed outright (kill -9, the OOM killer: no signal handler runs) leaves nothing running:
its workers die with it (``PR_SET_PDEATHSIG`` from the supervisor) and so do their Celery pool children
(Celery's own PDEATHSIG in the prefork pool). The issue found four such orphans still polling a deleted home
16 minutes later."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.app.servers import REPO, free_port

pytestmark = pytest.mark.slow


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (not ``pid`` itself)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                pending += children
        except OSError:
            continue
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def test_serve_killed_outright_leaves_no_worker_or_pool_child_running(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "cli", "serve", "--port", str(free_port())]  # one training worker, one cpu
    serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        # Two workers, each with its pool child: the processes an outright kill used to leave behind.
        deadline = time.monotonic() + 240
        while len(children := descendants(serve.pid)) < 4:
            assert serve.poll() is None, "serve ended by itself"
            assert time.monotonic() < deadline, f"serve's workers did not start: {children}"
            time.sleep(0.2)
        time.sleep(1.0)  # the pool children have asked for their PDEATHSIG by now
        children = descendants(serve.pid)

        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        deadline = time.monotonic() + 15
        while (alive := [pid for pid in children if is_alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"{len(alive)} of serve's {len(children)} processes outlived it"
        print(f"\nserve killed: its {len(children)} worker processes ended with it")
    finally:
        for pid in [serve.pid, *children]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        serve.wait(10)
