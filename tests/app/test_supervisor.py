"""The embedded mode's supervisor: a worker that crashes is restarted; stop ends every child."""

from __future__ import annotations

import os
import sys
import time

from app.supervisor import Child, Supervisor


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
