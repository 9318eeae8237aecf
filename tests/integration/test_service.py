"""The whole mission on real parts: submit over HTTP, watch it train live, download the weights and use
them; cancel; lose a worker to kill -9 and SIGTERM; several jobs on two workers."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load

from tests.integration.stack import Stack, job_body

pytestmark = pytest.mark.slow


def follow(stack: Stack, job_id: str) -> list[dict]:
    """The job's SSE stream, read live to its end."""
    events = []
    with httpx.stream("GET", f"{stack.url}/v1/jobs/{job_id}/events/stream", headers=stack.headers, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    return events


def predict_accuracy(weights: bytes, card: dict, test_root: Path) -> float:
    """What a user does with the download: torchvision's own model, the card's preprocessing."""
    model = torchvision.models.get_model(card["backbone"], **card["torchvision_kwargs"])
    model.load_state_dict(load(weights), strict=True)
    model.eval()
    mean = torch.tensor(card["preprocessing"]["mean"]).view(3, 1, 1)
    std = torch.tensor(card["preprocessing"]["std"]).view(3, 1, 1)
    correct = seen = 0
    for label, name in enumerate(card["class_names"]):
        for path in sorted((test_root / name).iterdir()):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
            x = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
            with torch.no_grad():
                correct += int(model(x[None]).argmax() == label)
            seen += 1
    return correct / seen


def test_submit_follow_live_download_and_predict_as_reported(stack, dataset_id, cifar):
    worker = stack.start_worker()
    with stack.client() as client:
        created = client.post("/v1/jobs", json=job_body(dataset_id), headers={"Idempotency-Key": "first-job"})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        events = follow(stack, job_id)
        job = client.get(f"/v1/jobs/{job_id}").json()
        weights = client.get(f"/v1/jobs/{job_id}/weights")
        card = client.get(f"/v1/jobs/{job_id}/artifacts/model.json").json()
    stack.stop_worker(worker)

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "status" and events[-1]["data"]["to"] == "succeeded"
    assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
    assert any(e["type"] == "step" for e in events)
    assert job["status"] == "succeeded" and job["metrics"]["test"]["test_acc"] is not None
    assert weights.status_code == 200
    assert hashlib.sha256(weights.content).hexdigest() == weights.headers["etag"].strip('"')
    accuracy = predict_accuracy(weights.content, card, cifar[0] / "test")
    assert accuracy == job["metrics"]["test"]["test_acc"]


def test_cancel_a_running_job_ends_it_within_two_seconds(stack, dataset_id):
    worker = stack.start_worker()
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=job_body(dataset_id, epochs=200)).json()["id"]
        deadline = time.monotonic() + 120
        while not any(e["type"] == "step" for e in stack.events(job_id)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
        job = stack.wait_for(job_id, {"cancelled", "succeeded", "failed"}, timeout=10)
        took = time.monotonic() - asked
    stack.stop_worker(worker)
    assert job["status"] == "cancelled" and took < 2.0, (job["status"], took)


def test_kill_9_mid_epoch_and_a_fresh_worker_resumes_to_identical_weights(stack, dataset_id):
    body = job_body(dataset_id, epochs=3)
    worker = stack.start_worker()
    with stack.client() as client:
        straight = client.post("/v1/jobs", json=body).json()["id"]
        stack.wait_for(straight, {"succeeded"})
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        deadline = time.monotonic() + 120
        while True:  # into the second epoch: a checkpoint behind, steps of the next one done
            events = stack.events(job_id)
            checkpoints = [e for e in events if e["type"] == "checkpoint"]
            if checkpoints and any(e["type"] == "step" and e["seq"] > checkpoints[0]["seq"] for e in events):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stack.kill_worker(worker)
        stack.start_worker()
        job = stack.wait_for(job_id, {"succeeded", "failed"})
        a = client.get(f"/v1/jobs/{straight}/weights").content
        b = client.get(f"/v1/jobs/{job_id}/weights").content
    assert job["status"] == "succeeded" and job["attempt"] == 2
    messages = [e["message"] for e in stack.events(job_id) if e["type"] in ("status", "info")]
    assert any("worker lost on attempt 1" in m for m in messages)
    assert any("from epoch 2 of 3" in m for m in messages)
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()


def test_sigterm_checkpoints_and_requeues_for_another_worker(stack, dataset_id):
    first = stack.start_worker()
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=job_body(dataset_id, epochs=4)).json()["id"]
        deadline = time.monotonic() + 120
        while sum(e["type"] == "step" for e in stack.events(job_id)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stack.stop_worker(first)  # returns once the worker has exited: the job is checkpointed and back
        after_stop = client.get(f"/v1/jobs/{job_id}").json()
        stack.start_worker()
        job = stack.wait_for(job_id, {"succeeded", "failed"})
    assert after_stop["status"] == "queued"
    assert job["status"] == "succeeded" and job["attempt"] == 1  # a preemption costs no attempt
    checkpoints = [e for e in stack.events(job_id) if e["type"] == "checkpoint"]
    assert any(e["data"]["mid_epoch"] for e in checkpoints)


def test_two_workers_run_every_job_exactly_once(stack, dataset_id):
    workers = [stack.start_worker(), stack.start_worker(queues="gpu")]
    with stack.client() as client:
        ids = [client.post("/v1/jobs", json=job_body(dataset_id, epochs=1, seed=i)).json()["id"] for i in range(4)]
        jobs = [stack.wait_for(job_id, {"succeeded", "failed", "cancelled"}) for job_id in ids]
    for worker in workers:
        stack.stop_worker(worker)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    owners = set()
    for job_id in ids:
        claims = [e for e in stack.events(job_id) if e["type"] == "status" and e["data"]["to"] == "running"]
        assert len(claims) == 1  # claimed once: no job ran twice
        owners.add(claims[0]["data"]["owner"].split(":")[0])  # the worker's node name
    assert owners == {"gpu-cpu@" + socket.gethostname(), "gpu@" + socket.gethostname()}  # both took jobs


def test_pause_frees_the_worker_and_resume_continues_to_identical_weights(stack, dataset_id):
    """One worker: a paused job leaves it to another job, then resumes from its checkpoint to the weights of
    an uninterrupted run."""
    body = job_body(dataset_id, epochs=2)
    worker = stack.start_worker()
    with stack.client() as client:
        straight = client.post("/v1/jobs", json=body).json()["id"]
        stack.wait_for(straight, {"succeeded"})
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        deadline = time.monotonic() + 120
        while sum(e["type"] == "step" for e in stack.events(job_id)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post(f"/v1/jobs/{job_id}/pause").json()["status"] == "pausing"
        paused = stack.wait_for(job_id, {"paused", "succeeded", "failed"}, timeout=30)
        other = client.post("/v1/jobs", json=job_body(dataset_id, epochs=1, seed=1)).json()["id"]
        assert stack.wait_for(other, {"succeeded", "failed"})["status"] == "succeeded"  # the worker was free
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "paused"  # and held the paused job
        assert client.post(f"/v1/jobs/{job_id}/resume").json()["status"] == "queued"
        job = stack.wait_for(job_id, {"succeeded", "failed"})
        a = client.get(f"/v1/jobs/{straight}/weights").content
        b = client.get(f"/v1/jobs/{job_id}/weights").content
    stack.stop_worker(worker)
    assert paused["status"] == "paused" and job["status"] == "succeeded" and job["attempt"] == 1
    moves = [(e["data"]["from"], e["data"]["to"]) for e in stack.events(job_id) if e["type"] == "status"]
    assert moves[-5:] == [
        ("running", "pausing"),
        ("pausing", "paused"),
        ("paused", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
