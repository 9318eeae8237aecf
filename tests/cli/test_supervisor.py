"""The embedded mode's supervisor: a worker that crashes is restarted; stop ends every child."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cli.supervisor import Child, Supervisor


def test_a_child_that_exits_is_restarted_and_stop_ends_it(tmp_path):
    starts = tmp_path / "starts"
    # Each start appends a line, then the child crashes after a moment (exit code 3).
    code = f"open({str(starts)!r}, 'a').write('x\\n'); import time; time.sleep(0.3); raise SystemExit(3)"
    supervisor = Supervisor([Child("crashy", [sys.executable, "-c", code], dict(os.environ))], grace_seconds=5)
    supervisor.start()
    deadline = time.monotonic() + 20
    while (not starts.exists() or len(starts.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    supervisor.stop()
    assert len(starts.read_text().splitlines()) >= 3  # started, crashed, restarted (with a backoff), ...
    process = supervisor.children[0].process
    assert process is not None and process.poll() is not None


def test_stop_asks_politely_first_then_kills(tmp_path):
    marker = tmp_path / "terminated"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').write('ok'), sys.exit(0)))\n"
        "while True: time.sleep(0.1)\n"
    )
    supervisor = Supervisor([Child("polite", [sys.executable, "-c", code], dict(os.environ))], grace_seconds=5)
    supervisor.start()
    time.sleep(1.0)
    started = time.monotonic()
    supervisor.stop()
    assert marker.read_text() == "ok"  # it heard SIGTERM and stopped on its own
    assert time.monotonic() - started < 5


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has died and waits for its reaper


def test_children_die_with_a_supervisor_that_is_killed(tmp_path):
    """kill -9 of the parent (no stop, no signal handler) leaves no child running: PR_SET_PDEATHSIG."""
    import signal
    import subprocess

    pids = tmp_path / "pids"
    parent_code = (
        "import os, sys, time\n"
        "from cli.supervisor import Child, Supervisor\n"
        "child = [sys.executable, '-c', 'import time; time.sleep(600)']\n"
        "s = Supervisor([Child('a', child, dict(os.environ)), Child('b', child, dict(os.environ))])\n"
        "s.start()\n"
        f"open({str(pids)!r}, 'w').write(' '.join(str(c.process.pid) for c in s.children))\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 30
    while not pids.exists() or not pids.read_text():
        assert time.monotonic() < deadline, "the supervisor did not start its children"
        time.sleep(0.1)
    children = [int(pid) for pid in pids.read_text().split()]
    assert all(_alive(pid) for pid in children)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children), "a child outlived its killed supervisor"


def test_a_child_with_a_log_path_writes_its_output_there_appended(tmp_path):
    log = tmp_path / "logs" / "serve.log"
    log.parent.mkdir()
    log.write_text("earlier run\n")
    code = "import sys; print('banner on stdout', flush=True); print('warning on stderr', file=sys.stderr)"
    child = Child("chatty", [sys.executable, "-c", code], dict(os.environ), log_path=log)
    supervisor = Supervisor([child], grace_seconds=5)
    supervisor.start()
    assert child.process is not None
    child.process.wait(30)
    supervisor.stop()
    assert log.read_text().splitlines()[:3] == ["earlier run", "banner on stdout", "warning on stderr"]
