"""A user's session with the compose stack, through its published port only (run by tests/compose/run).

Creates a key with the image's own CLI, uploads a seeded CIFAR-10 subset, runs a job to ``succeeded`` while
``docker compose stop trainer-cpu`` takes its worker away mid-job (the job checkpoints, goes back to the queue
and resumes when the worker starts again), downloads the weights and checks their sha256, then takes the whole
stack down and up again: the key, the data set, the job and its weights are still there (the volumes).

    python -m tests.compose.scenario --port 8000 -- docker compose -p NAME --env-file FILE --profile cpu
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cifar import make_cifar_subset

UP = ["up", "-d", "--wait", "--scale", "trainer=0"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def log(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


class Stack:
    def __init__(self, compose: list[str], port: int) -> None:
        self.compose = compose
        self.url = f"http://127.0.0.1:{port}"
        self.headers: dict[str, str] = {}

    def run(self, *args: str) -> str:
        started = time.monotonic()
        result = subprocess.run([*self.compose, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        log(f"docker compose {shlex.join(args)}: {time.monotonic() - started:.0f} s")
        return result.stdout

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def wait_ready(self, timeout: float = 120) -> None:
        """/readyz: the database and the broker answer (a worker that cannot reach Redis is no use)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.url}/readyz not ready within {timeout} s"
            time.sleep(1)

    def events(self, client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        params = {"limit": 100}
        while True:
            page = client.get(f"/v1/jobs/{job_id}/events", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            events += body["data"]
            if not body["has_more"]:
                return events
            params["after"] = body["last_seq"]

    def wait_for(self, client: httpx.Client, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in statuses:
            assert time.monotonic() < deadline, f"{job_id} still {job['status']} after {timeout} s"
            time.sleep(1)
        return job


def cifar_archive(folder: Path) -> bytes:
    """A seeded subset of the real CIFAR-10, 20 train and 5 test images per class, as a .tar.gz."""
    root = make_cifar_subset(folder / "cifar", per_class=20, test_per_class=5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split in ("train", "test"):
            tar.add(root / split, arcname=split)
    return buffer.getvalue()


def job_body(dataset_id: str) -> dict[str, Any]:
    """Small enough for a loaded CI machine, long enough (2 epochs of 7 steps) to stop its worker mid-job."""
    return {
        "spec": {
            "backbone": {"name": "resnet18"},
            "data": {"dataset": dataset_id, "image_size": 32, "batch_size": 32},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "training": {"epochs": 2, "seed": 0, "deterministic": True, "log_every_steps": 1},
        }
    }


def create_key(stack: Stack) -> None:
    secret = stack.run("exec", "-T", "api", "finetune", "keys", "create", "--project", "compose-test").strip()
    stack.headers = {"Authorization": f"Bearer {secret}"}


def upload_dataset(client: httpx.Client) -> str:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        archive = cifar_archive(Path(folder))
    created = client.post("/v1/datasets", files={"file": ("cifar10.tar.gz", archive)})
    assert created.status_code in (201, 202), created.text
    dataset_id: str = created.json()["id"]
    deadline = time.monotonic() + 300
    while (shown := client.get(f"/v1/datasets/{dataset_id}").json())["status"] == "validating":
        assert time.monotonic() < deadline, "the validator did not finish the data set in 300 s"
        time.sleep(1)
    assert shown["status"] == "ready", shown
    assert shown["class_names"] == sorted(shown["class_names"]) and len(shown["class_names"]) == 10, shown
    log(f"data set {dataset_id} ready: {shown['num_images']} images, {time.monotonic() - started:.0f} s")
    return dataset_id


def train_through_a_worker_stop(stack: Stack, client: httpx.Client, dataset_id: str) -> str:
    submitted = time.monotonic()
    created = client.post("/v1/jobs", json=job_body(dataset_id))
    assert created.status_code == 201, created.text
    job_id: str = created.json()["id"]
    deadline = time.monotonic() + 600
    while sum(event["type"] == "step" for event in stack.events(client, job_id)) < 2:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] not in TERMINAL, f"the job ended before the worker could be stopped: {job}"
        assert time.monotonic() < deadline, "no training steps within 600 s"
        time.sleep(0.5)
    log(f"two training steps {time.monotonic() - submitted:.0f} s after the job was submitted")
    stack.run("stop", "trainer-cpu")  # SIGTERM: the job checkpoints at its next step and goes back to the queue
    after_stop = client.get(f"/v1/jobs/{job_id}").json()
    assert after_stop["status"] == "queued", after_stop
    stack.run("start", "trainer-cpu")
    started = time.monotonic()
    job = stack.wait_for(client, job_id, TERMINAL, timeout=900)
    log(f"the job ended {time.monotonic() - started:.0f} s after its worker started again")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1, job  # a stop is a preemption: it costs no attempt
    events = stack.events(client, job_id)
    assert any(e["type"] == "checkpoint" and e["data"]["mid_epoch"] for e in events), "no mid-epoch checkpoint"
    claims = [e for e in events if e["type"] == "status" and e["data"]["to"] == "running"]
    assert len(claims) == 2, claims  # claimed before the stop, and again after it: resumed, not restarted anew
    log(f"job {job_id} succeeded after its worker's stop and start: {job['metrics']['test']}")
    return job_id


def download_weights(client: httpx.Client, job_id: str) -> str:
    weights = client.get(f"/v1/jobs/{job_id}/weights")
    assert weights.status_code == 200, weights.text
    digest = hashlib.sha256(weights.content).hexdigest()
    assert digest == weights.headers["x-content-sha256"] == weights.headers["etag"].strip('"')
    listed = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert any(artifact["sha256"] == digest for artifact in listed.values()), listed
    log(f"weights: {len(weights.content)} bytes, sha256 {digest}")
    return digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="The API's published port.")
    parser.add_argument("compose", nargs="+", help="The compose command, project and files included.")
    args = parser.parse_args()
    stack = Stack(args.compose, args.port)

    stack.wait_ready()
    create_key(stack)
    with stack.client() as client:
        dataset_id = upload_dataset(client)
        job_id = train_through_a_worker_stop(stack, client, dataset_id)
        digest = download_weights(client, job_id)

    stack.run("down")  # the containers go; the named volumes stay
    started = time.monotonic()
    stack.run(*UP)
    stack.wait_ready()
    log(f"the stack came back up in {time.monotonic() - started:.0f} s")
    with stack.client() as client:  # the key lives in PostgreSQL's volume
        assert client.get(f"/v1/datasets/{dataset_id}").json()["status"] == "ready"
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        assert download_weights(client, job_id) == digest  # the artifact volume
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
