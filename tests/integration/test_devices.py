"""One job on two processes through the production stack (the API, real Celery workers, PostgreSQL, Redis):
submitted with the CLI (``finetune jobs submit --wait``), run by a worker that advertises 2 CPU devices (DDP over
gloo), downloaded with ``finetune jobs download``. Beside it, a 1-device job on a second worker of the same host
(the same FT_HOME): the host's two device slots let only one of them run at a time, and the one that found its
devices busy went back to the queue without an attempt counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.app.servers import REPO
from tests.integration.stack import Stack, job_body

pytestmark = pytest.mark.slow

TWO_DEVICES = {"FT_WORKER_DEVICES": "2"}  # a fake 2-device host on the CPU: slots cpu0 and cpu1


def finetune(stack: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "FT_API_URL": stack.url, "FT_API_KEY": stack.headers["Authorization"].split()[1]}
    return subprocess.run(
        [sys.executable, "-m", "cli", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def worker_logs(stack: Stack) -> str:
    return "".join((stack.home / f"worker-{i}.log").read_text() for i in range(len(stack.workers)))


def test_a_two_process_job_through_the_cli_and_a_one_device_job_never_overlap_on_two_slots(
    stack: Stack, dataset_id: str, tmp_path: Path
) -> None:
    spec = job_body(dataset_id, epochs=2, devices=2)["spec"]
    spec_file = tmp_path / "two.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    with stack.client() as client:  # a 1-device job queued first: one worker takes it, the other the 2-device one
        single = client.post("/v1/jobs", json=job_body(dataset_id, epochs=1, seed=1)).json()["id"]
    workers = [stack.start_worker(env=TWO_DEVICES), stack.start_worker(env=TWO_DEVICES)]

    submitted = finetune(stack, "jobs", "submit", str(spec_file), "--wait")
    if submitted.returncode != 0:
        errors = [line[:3000] for line in worker_logs(stack).splitlines() if '"level": "ERROR"' in line]
        pytest.fail(f"{submitted.stdout[-2000:]}\n" + "\n".join(errors))
    double = json.loads(submitted.stdout)["id"]
    first = stack.wait_for(single, {"succeeded", "failed", "cancelled"})
    downloaded = finetune(stack, "jobs", "download", double, "--out", str(tmp_path / "weights.safetensors"))
    assert downloaded.returncode == 0, downloaded.stderr
    with stack.client() as client:
        second = client.get(f"/v1/jobs/{double}").json()
        card = client.get(f"/v1/jobs/{double}/artifacts/model.json").json()
    for worker in workers:
        stack.stop_worker(worker)

    assert second["status"] == "succeeded" and first["status"] == "succeeded", (second["error"], first["error"])
    assert second["spec"]["training"]["devices"] == 2 and second["progress"]["epoch"] == 2
    epochs = [e["data"]["epoch"] for e in stack.events(double) if e["type"] == "epoch"]
    assert epochs == [1, 2]  # relayed from rank 0 alone
    weights = load_file(tmp_path / "weights.safetensors")
    assert set(weights) and card["backbone"] == "resnet18" and len(card["class_names"]) == 10
    # The host's two slots: the jobs ran one after the other, whichever went first, and the one that waited
    # for its devices was claimed once (the waits cost no attempt).
    one_then_other = sorted([first, second], key=lambda job: job["started_at"])
    assert one_then_other[0]["finished_at"] <= one_then_other[1]["started_at"]
    assert first["attempt"] == 1 and second["attempt"] == 1
    assert "device(s) are not free on this host" in worker_logs(stack)
