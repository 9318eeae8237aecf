"""A newcomer's first run, as the README tells it, against a real embedded server (`finetune serve`, its
workers in child processes): a short readable start with the workers' chatter in a log file, an upload with
a progress bar (and none with --json or --quiet), and a pretrained backbone whose download fails (no network:
HTTPS goes to a closed port) reported as `weights_unavailable` naming the URL, the cache path and the cause,
in the CLI and the API alike."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.servers import REPO, free_port

pytestmark = pytest.mark.slow

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        seen = path.read_text(errors="replace")
        if text in seen:
            return seen
        assert process.poll() is None, f"serve exited {process.returncode}:\n{seen[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout:.0f}s:\n{seen[-3000:]}"
        time.sleep(0.3)


def test_a_first_run_is_readable_shows_transfers_and_names_a_failed_weights_download(cifar, tmp_path):
    port, home, torch_home = free_port(), tmp_path / "home", tmp_path / "torch"
    offline = closed_port_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_") and k.lower() not in ("no_proxy",)}
    env |= {"FT_HOME": str(home), "TORCH_HOME": str(torch_home), "https_proxy": offline, "HTTPS_PROXY": offline}
    terminal = tmp_path / "terminal.txt"
    with terminal.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        shown = wait_for_text(terminal, "Press Ctrl-C to stop", serve, timeout=300)
        log_path = (home / "logs" / "serve.log").resolve()
        assert f"API        {url}\n" in shown and f"API docs   {url}/docs\n" in shown
        assert f"FT_HOME    {home.resolve()}" in shown and f"logs       {log_path}" in shown
        assert "workers    ready: 1 training, 1 data set validation" in shown
        # The workers' banners and kombu's warnings went to the log file, not the terminal.
        logged = log_path.read_text()
        for chatter in ("[queues]", "ready."):
            assert chatter in logged and chatter not in shown
        assert "No hostname was supplied" not in shown and "Traceback" not in shown
        assert len(shown.strip().splitlines()) <= 12, shown

        client_env = {**env, "FT_API_URL": url, "TTY_COMPATIBLE": "1", "COLUMNS": "120"}  # a terminal, for rich

        def finetune(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "cli", *args]
            return subprocess.run(command, cwd=REPO, env=client_env, capture_output=True, text=True, timeout=300)

        size = cifar[1].stat().st_size
        uploaded = finetune("datasets", "upload", str(cifar[1]), "--wait")
        assert uploaded.returncode == 0, uploaded.stderr
        bar = ANSI.sub("", uploaded.stderr)
        assert f"uploading {cifar[1].name}" in bar
        assert f"/{size / 1e6:.1f} MB" in bar or f"/{size / 1e3:.1f} kB" in bar, bar  # bytes done of the total
        assert "B/s" in bar, bar  # the rate
        as_json = finetune("datasets", "upload", str(cifar[1]), "--json")
        assert as_json.returncode == 0 and json.loads(as_json.stdout)["bytes"] == size
        assert "uploading" not in as_json.stderr  # --json: the objects on stdout, no bar on stderr
        quiet = finetune("--quiet", "datasets", "upload", str(cifar[1]))
        assert quiet.returncode == 0 and quiet.stderr == ""
        dataset_id = re.search(r"ds_[0-9A-Za-z]+", uploaded.stdout)
        assert dataset_id is not None, uploaded.stdout

        spec = tmp_path / "pretrained.yaml"
        spec.write_text(
            "backbone: {name: resnet18, weights: DEFAULT}\n"
            "data: {image_size: 32, batch_size: 32}\n"
            "training: {epochs: 1}\n"
        )
        submitted = finetune("jobs", "submit", str(spec), "--dataset", dataset_id.group(0), "--wait")
        cache_path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        said = ANSI.sub("", submitted.stdout + submitted.stderr)
        assert submitted.returncode == 1, said  # accepted (downloads are on when embedded), then failed
        assert "weights_unavailable" in said and RESNET18_URL in said and "Traceback" not in said
        job_id = re.search(r"ftjob_[0-9A-Za-z]+", said)
        assert job_id is not None
        error = httpx.get(f"{url}/v1/jobs/{job_id.group(0)}", timeout=10).json()["error"]
        assert error["code"] == "weights_unavailable"
        assert RESNET18_URL in error["message"] and str(cache_path) in error["message"]
        assert "refused" in error["message"].lower()  # the cause
        assert not cache_path.exists()
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C at the terminal
        serve.wait(90)
    assert "stopping the workers" in terminal.read_text()
