"""The service's own costs, on PostgreSQL and Redis with real workers on this machine.

- queue latency: a job submitted to an idle worker (its pool child forked and warmed up), until it is
  ``running`` (claimed), median and p99; from the database's own timestamps (job created -> the
  ``running`` status event). Goal: < 100 ms median.
- event latency: an event published by a running job's worker (the engine's callback -> the publisher
  thread -> database + Redis) until an SSE client holds it, p99. Goal: < 50 ms.
- service overhead: the same short job through the service (submit -> succeeded) and by
  ``python -m training run`` on the same images, wall time ratio. Goal: the service adds < 5%.

    .venv/bin/python bench/service_bench.py [--jobs 10] [--events 200] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.app.servers import REPO
from tests.cifar import make_cifar_subset
from tests.integration.stack import Stack, job_body, running_stack

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IDLE_SECONDS = 10.0  # a worker's new pool child imports torch while it waits: "idle" means after that
# The production defaults, not the integration tests' fast clocks (which poll the database more often).
PRODUCTION_CLOCKS = {
    "FT_LEASE_SECONDS": "30",
    "FT_LEASE_RENEW_SECONDS": "5",
    "FT_CANCEL_POLL_SECONDS": "0.5",
    "FT_SWEEP_INTERVAL_SECONDS": "5",
    "FT_REDISPATCH_AFTER_SECONDS": "15",
}
REDIS = "redis://127.0.0.1:6379/0"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def upload(stack: Stack, archive: Path) -> str:
    with stack.client() as client, archive.open("rb") as file:
        dataset = client.post("/v1/datasets", files={"file": (archive.name, file)}).json()["id"]
        while client.get(f"/v1/datasets/{dataset}").json()["status"] == "validating":
            time.sleep(0.2)
    return str(dataset)


def queue_latency(stack: Stack, dataset: str, jobs: int) -> list[float]:
    """Milliseconds from a job's creation to its claim, for jobs sent one at a time to an idle worker.

    Each job is cancelled as soon as it runs: the measure stops at the claim (the model build is excluded)."""
    engine = create_engine(stack.env["FT_DATABASE_URL"])
    latencies = []
    with stack.client() as client:
        for _ in range(jobs):
            time.sleep(IDLE_SECONDS)  # the pool child for the next job has forked and warmed up: idle
            job_id = client.post("/v1/jobs", json=job_body(dataset, epochs=1)).json()["id"]
            stack.wait_for(job_id, {"running", "succeeded", "failed"})
            client.post(f"/v1/jobs/{job_id}/cancel")
            stack.wait_for(job_id, {"cancelled", "succeeded", "failed"})
            with engine.connect() as connection:
                created, claimed = connection.execute(
                    text(
                        "SELECT j.created_at, e.created_at FROM jobs j JOIN job_events e ON e.job_id = j.id "
                        "WHERE j.id = :id AND e.type = 'status' AND e.data->>'to' = 'running'"
                    ),
                    {"id": job_id},
                ).one()
            latencies.append((claimed - created).total_seconds() * 1000)
    engine.dispose()
    return latencies


def event_latency(stack: Stack, dataset: str, count: int) -> list[float]:
    """Milliseconds from a worker's publisher taking an event to an SSE client reading it."""
    from app.context import Runtime
    from app.db.session import transaction
    from app.services.job_state import claim_job, finish_job
    from app.settings import Settings
    from app.statuses import JobStatus
    from worker.publisher import EventPublisher, Fence, Step

    os.environ.update({name: value for name, value in stack.env.items() if name.startswith("FT_")})
    services = Runtime.from_settings(Settings())  # the stack's settings, from the environment
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=job_body(dataset, epochs=1)).json()["id"]
    with transaction(services.factory) as session:  # this process plays the worker
        assert claim_job(session, job_id, "bench", 600)
    publisher = EventPublisher(services, Fence(job_id, "bench", 1), on_lease_lost=lambda: None)
    publisher.start()
    latencies: list[float] = []
    ready = threading.Event()

    def read() -> None:
        url = f"{stack.url}/v1/jobs/{job_id}/events/stream"
        with httpx.stream("GET", url, headers=stack.headers, timeout=60) as response:
            ready.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:").strip())
                    sent = (event.get("data") or {}).get("sent_at")
                    if sent is not None:
                        latencies.append((time.time() - sent) * 1000)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(10)
    time.sleep(0.5)
    for step in range(count):
        metrics = {"step": step, "total_steps": count, "loss": 1.0, "lr": 0.1, "sent_at": time.time()}
        publisher.put(Step(metrics))
        time.sleep(0.02)
    publisher.drain()
    with transaction(services.factory) as session:
        finish_job(session, job_id, "bench", JobStatus.CANCELLED)
    reader.join(30)
    publisher.close()
    services.close()
    return latencies


def overhead(stack: Stack, dataset: str, data_root: Path, epochs: int, workdir: Path) -> dict[str, float]:
    """Wall seconds of the same job through the service and through `python -m training run`."""
    body = job_body(dataset, epochs=epochs, log_every_steps=20)
    time.sleep(IDLE_SECONDS)
    started = time.perf_counter()
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
    job = stack.wait_for(job_id, {"succeeded", "failed"}, timeout=1800)
    service = time.perf_counter() - started
    assert job["status"] == "succeeded", job
    spec = body["spec"]
    spec["data"] = {**spec["data"], "path": str(data_root)}
    del spec["data"]["dataset"]
    spec_path = workdir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training", "run", str(spec_path), "--out", str(workdir / "run")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    local = time.perf_counter() - started
    return {"service_seconds": service, "local_seconds": local, "ratio": service / local}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = make_cifar_subset(work / "cifar10", per_class=args.per_class, test_per_class=20)
        archive = Path(shutil.make_archive(str(root), "zip", root))
        result: dict[str, Any] = {}
        (work / "stack").mkdir()
        with running_stack(POSTGRES, REDIS, work / "stack", **PRODUCTION_CLOCKS) as stack:
            stack.start_worker()
            dataset = upload(stack, archive)
            queue = queue_latency(stack, dataset, args.jobs)
            result["queue_latency_ms"] = {
                "median": round(statistics.median(queue), 1),
                "p99": round(percentile(queue, 99), 1),
                "n": len(queue),
            }
            events = event_latency(stack, dataset, args.events)
            result["event_latency_ms"] = {
                "median": round(statistics.median(events), 1),
                "p99": round(percentile(events, 99), 1),
                "n": len(events),
            }
            result["overhead"] = {k: round(v, 3) for k, v in overhead(stack, dataset, root, args.epochs, work).items()}
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
