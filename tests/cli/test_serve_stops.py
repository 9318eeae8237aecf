"""``finetune serve`` (embedded) stops within seconds of a Ctrl-C even with an event stream open (a request that would
never end by itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from app.context import Runtime
from app.db.session import transaction
from app.settings import Settings
from tests.app.factories import make_job
from tests.app.servers import REPO, free_port, wait_until_up


def test_ctrl_c_stops_embedded_serve_with_a_stream_open(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(home)}
    port = free_port()
    command = [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(port)]
    serve = subprocess.Popen(command, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(serve, url, timeout=120)  # migrations, then the app: slow on a busy host
    services = Runtime.from_settings(Settings(home=home))  # the embedded SQLite file serve made
    with transaction(services.factory) as session:
        job_id = make_job(session).id
    services.close()
    opened = threading.Event()

    def follow() -> None:
        try:
            with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events/stream", timeout=60) as response:
                opened.set()
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the server went away: expected

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(30)
    time.sleep(0.5)
    began = time.monotonic()
    serve.send_signal(signal.SIGINT)
    try:
        serve.wait(20)
    except subprocess.TimeoutExpired:
        serve.kill()
        raise AssertionError("serve did not stop within 20 s of a Ctrl-C") from None
    took = time.monotonic() - began
    assert took < 12, f"serve took {took:.1f}s to stop"
    print(f"\nserve stopped {took:.1f}s after Ctrl-C with a stream open")
