"""The production stack on the S3 store (a real SeaweedFS gateway): PostgreSQL, Redis, the API and real
Celery workers in subprocesses, each worker with an FT_HOME of its own as if on another host, sharing
nothing but the database, Redis and the bucket. A worker is killed mid-job; another host resumes it from
the checkpoint in the store, to the same weights, bit for bit, as an uninterrupted run; downloads are
redirected to the store and the client follows."""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.client import Client
from tests.cifar import make_cifar_subset
from tests.integration.stack import Stack, job_body, running_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_stack(postgres_url, redis_url, s3_gateway, tmp_path_factory) -> Iterator[Stack]:
    env = s3_gateway.env(f"stack-{uuid.uuid4().hex[:8]}") | {"FT_DOWNLOAD_REDIRECT": "true"}
    with running_stack(postgres_url, redis_url, tmp_path_factory.mktemp("s3-stack"), **env) as built:
        yield built


def upload_and_validate(stack: Stack, archive: Path, validator_home: Path) -> str:
    worker = stack.start_worker(queues="cpu", home=validator_home)
    try:
        with stack.client() as client, archive.open("rb") as file:
            created = client.post("/v1/datasets", files={"file": ("cifar10.zip", file)})
            assert created.status_code == 201, created.text
            dataset_id = created.json()["id"]
            deadline = time.monotonic() + 120
            while (shown := client.get(f"/v1/datasets/{dataset_id}").json())["status"] == "validating":
                assert time.monotonic() < deadline, "validation did not finish"
                time.sleep(0.3)
        assert shown["status"] == "ready", shown
        return str(dataset_id)
    finally:
        stack.stop_worker(worker)


def wait_for_a_step_after_the_first_checkpoint(stack: Stack, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        events = stack.events(job_id)
        checkpoints = [e for e in events if e["type"] == "checkpoint"]
        if checkpoints and any(e["type"] == "step" and e["seq"] > checkpoints[0]["seq"] for e in events):
            return
        assert time.monotonic() < deadline, "no checkpoint and step after it"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    """A zip of a seeded CIFAR-10 subset, 8 train and 1 test image per class: a few steps per epoch."""
    root = make_cifar_subset(tmp_path_factory.mktemp("cifar") / "cifar10", per_class=8, test_per_class=1)
    return Path(shutil.make_archive(str(root), "zip", root))


def test_a_job_killed_on_one_host_resumes_on_another_from_the_store_to_identical_weights(
    s3_stack, tiny_cifar, tmp_path
):
    stack = s3_stack
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    dataset_id = upload_and_validate(stack, tiny_cifar, tmp_path / "validator")
    body = job_body(dataset_id, epochs=2, log_every_steps=1)
    body["spec"]["data"] |= {"image_size": 16, "batch_size": 8}  # 9 steps an epoch

    worker_a = stack.start_worker(queues="gpu", home=host_a)
    with stack.client() as client:
        straight = client.post("/v1/jobs", json=body).json()["id"]
        assert stack.wait_for(straight, {"succeeded", "failed"})["status"] == "succeeded"
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        wait_for_a_step_after_the_first_checkpoint(stack, job_id)
        stack.kill_worker(worker_a)
        stack.start_worker(queues="gpu", home=host_b)
        job = stack.wait_for(job_id, {"succeeded", "failed"})
        redirected = client.get(f"/v1/jobs/{job_id}/weights")
    assert job["status"] == "succeeded" and job["attempt"] == 2
    messages = [e["message"] for e in stack.events(job_id) if e["type"] in ("status", "info")]
    assert any("from epoch 2 of 2" in m for m in messages)  # resumed from the checkpoint, not from scratch

    # downloads: a 302 to the store, which the Python client follows (and checks the sha256 of)
    assert redirected.status_code == 302 and redirected.headers["location"].startswith(stack.env["FT_S3_ENDPOINT_URL"])
    api_key = stack.headers["Authorization"].removeprefix("Bearer ")
    with Client(stack.url, api_key) as sdk:
        a = sdk.jobs.download_weights(straight, tmp_path / "straight.safetensors")
        b = sdk.jobs.download_weights(job_id, tmp_path / "resumed.safetensors")
    assert a.sha256 == b.sha256 == redirected.headers["x-content-sha256"]
    assert hashlib.sha256(b.path.read_bytes()).hexdigest() == b.sha256

    # the hosts shared no folder: B fetched the data set from the store into its own cache
    dataset_sha = httpx.get(f"{stack.url}/v1/datasets/{dataset_id}", headers=stack.headers).json()["sha256"]
    assert (host_b / "cache" / "sha256" / dataset_sha).is_file()
    assert not (stack.home / "artifacts").exists()  # the API wrote nothing to its own disk
    assert not (host_a / "artifacts").exists() and not (host_b / "artifacts").exists()
