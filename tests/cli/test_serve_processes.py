"""``finetune serve --api-processes N``: several API processes on one port, each logging as ``serve`` was told
to (uvicorn starts them afresh, with none of the parent's handlers), their HTTP metrics summed at every scrape
whichever process answers it, and all of them gone when ``serve`` is killed outright (SIGKILL: nothing of
``serve`` runs to stop them; a Ctrl-C is uvicorn's own shutdown, as with one process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.servers import REPO, free_port, wait_until_up

PROBES = 12


@pytest.mark.slow  # two API processes start: 51-66 s at a load average of 12-18 on 2 cores
def test_two_api_processes_log_in_the_configured_format_and_share_their_metrics(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FT_HOME": str(tmp_path / "home"), "FT_LOG_FORMAT": "json"}
    for name in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    command = [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(port), "--api-processes", "2"]
    server = subprocess.Popen(
        [*command, "--verbose"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_up(server, url, timeout=180)  # two processes import the app: slow on a busy host
        for probe in range(PROBES):  # a connection each: either process may take it
            response = httpx.get(f"{url}/v1/backbones/resnet18", headers={"X-Request-ID": f"probe-{probe}"}, timeout=30)
            assert response.status_code == 200
        scrapes = [httpx.get(f"{url}/metrics", timeout=30).text for _ in range(4)]
    finally:
        server.send_signal(signal.SIGKILL)
        _, stderr = server.communicate(timeout=60)  # the pipe closes once the API processes, its writers, died
    for scrape in scrapes:  # every scrape counts every probe, whichever process served it and answers now
        counted = re.search(
            r'^finetune_http_requests_total\{method="GET",route="/v1/backbones/\{name\}",status="200"\} (\S+)$',
            scrape,
            re.MULTILINE,
        )
        assert counted is not None and float(counted.group(1)) == PROBES, scrape[:2000]
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    started = {r["pid"] for r in records if r["logger"] == "uvicorn.error" and "startup complete" in r["message"]}
    assert len(started) == 2, lines[-40:]  # each API process logged, in JSON, through its own handler
    access = [r for r in records if r["logger"] == "uvicorn.access" and str(r.get("request_id")).startswith("probe-")]
    assert len(access) == PROBES and {r["pid"] for r in access} <= started
    assert all(line.startswith("{") for line in lines if "Application" in line or "GET /" in line)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in started):
        assert time.monotonic() < deadline, "an API process outlived serve"
        time.sleep(0.1)
