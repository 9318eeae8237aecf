"""The embedded mode, started the way the README starts it (`make serve`): no Redis, no PostgreSQL,
no Docker. Upload, train, follow live, download, use the weights, hear of the end by a signed webhook;
Ctrl-C stops it all cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.app.servers import REPO, free_port
from tests.app.webhooks.receiver import running_receiver
from tests.integration.test_service import predict_accuracy

pytestmark = pytest.mark.slow


def test_make_serve_runs_the_whole_flow_with_no_servers(cifar, tmp_path):
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(home)}
    env["FT_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the test's receiver
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        ["make", "serve", f"PORT={port}"], cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # `make serve` installs first when the venv is stale
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        with (
            httpx.Client(base_url=url, timeout=60) as client,
            cifar[1].open("rb") as archive,
            running_receiver() as receiver,
        ):
            hook = {"url": receiver.url, "events": ["job.succeeded"]}
            secret = client.post("/v1/webhooks", json=hook).json()["secret"]
            ds = client.post("/v1/datasets", files={"file": ("cifar10.zip", archive)}).json()["id"]
            while client.get(f"/v1/datasets/{ds}").json()["status"] == "validating":
                time.sleep(0.3)
            spec = {
                "data": {"dataset": ds, "image_size": 32, "batch_size": 32},
                "training": {"epochs": 2, "log_every_steps": 2},
            }
            job_id = client.post("/v1/jobs", json={"spec": spec}).json()["id"]
            pause_and_resume(client, job_id)
            events = []
            with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", timeout=300) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line.removeprefix("data:").strip()))
            job = client.get(f"/v1/jobs/{job_id}").json()
            weights = client.get(f"/v1/jobs/{job_id}/weights").content
            card = client.get(f"/v1/jobs/{job_id}/artifacts/model.json").json()
            (delivered,) = receiver.wait_for(1, timeout=60)
            told = Webhook(secret).verify(delivered.body, delivered.headers)
            assert told["type"] == "job.succeeded" and told["data"]["id"] == job_id
        assert events[-1]["data"]["to"] == "succeeded" and job["status"] == "succeeded"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert predict_accuracy(weights, card, cifar[0] / "test") == job["metrics"]["test"]["test_acc"]
        assert (home / "finetune.db").is_file()  # SQLite, under FT_HOME
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C at the terminal
        serve.wait(60)
    assert serve.returncode in (0, 2, 130, -signal.SIGINT), serve.returncode
    deadline = time.monotonic() + 30
    while processes_with_home(home) and time.monotonic() < deadline:  # workers finish their warm shutdown
        time.sleep(0.5)
    assert not processes_with_home(home), "processes of the embedded service outlived Ctrl-C"


def pause_and_resume(client: httpx.Client, job_id: str) -> None:
    """Pause the job once it trains, see it paused, and resume it: the embedded worker takes it again."""
    deadline = time.monotonic() + 300
    while not any(e["type"] == "step" for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{job_id}/pause").json()["status"] in ("pausing", "paused")
    while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) == "pausing":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status == "paused"
    assert client.post(f"/v1/jobs/{job_id}/resume").json()["status"] == "queued"


def processes_with_home(home: Path) -> list[int]:
    """Processes whose environment points at ``home``: the API and its workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"FT_HOME={home}".encode() in environ.split(b"\0"):
                found.append(int(entry.name))
    return found
