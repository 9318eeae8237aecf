"""The service's own costs, on PostgreSQL and Redis with real workers on this machine.

- queue latency: a job submitted to an idle worker (its pool child forked and warmed up), until it is
  ``running`` (claimed), median and p99; from the database's own timestamps (job created -> the
  ``running`` status event). Goal: < 100 ms median.
- event latency: an event published by a running job's worker (the engine's callback -> the publisher
  thread -> database + Redis) until an SSE client holds it, p99. Goal: < 50 ms.
- service overhead: the same short job through the service (submit -> succeeded) and by
  ``python -m training run`` on the same images, wall time ratio, ``--rounds`` of each side alternating.
  Goal: the service adds < 5%. The service's time is broken down from what it records: the database's
  timestamps (created, claimed, finished) and the attempt's ``timings`` event (worker.timings: the claim,
  imports, the inputs' fetch and extraction, the engine, the publisher's drain, the artifacts' upload,
  and the publisher's event writes and checkpoint uploads beside the engine).

    .venv/bin/python bench/service_bench.py [--jobs 10] [--events 200] [--epochs 3] [--rounds 2]
    .venv/bin/python bench/service_bench.py --only overhead --rounds 3
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


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99 and count of latencies in milliseconds."""
    return {"median": round(statistics.median(values), 1), "p99": round(percentile(values, 99), 1), "n": len(values)}


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


def through_service(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    """One job through the service: submit -> finished (the database's clock, the same machine's), with the
    breakdown of that time from the job's timestamps and its attempt's ``timings`` event."""
    time.sleep(IDLE_SECONDS)  # the worker's pool child (a fresh one per job) has imported torch: idle
    submitted = time.time()
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
    answered = time.time()
    job = stack.wait_for(job_id, {"succeeded", "failed"}, timeout=1800, every=1.0)
    seen = time.time()
    assert job["status"] == "succeeded", job
    engine = create_engine(stack.env["FT_DATABASE_URL"])
    with engine.connect() as connection:
        created, claimed, finished = connection.execute(
            text("SELECT created_at, attempt_started_at, finished_at FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
    engine.dispose()
    timings = next(e["data"]["timings"] for e in stack.events(job_id) if "timings" in (e.get("data") or {}))
    phases = timings["phases_seconds"]
    breakdown = {
        "submit (POST answered)": answered - submitted,
        "queued (created -> claimed: dispatch, broker, pool child, claim)": (claimed - created).total_seconds(),
        **{f"attempt: {name}": seconds for name, seconds in phases.items()},
    }
    attempt = (finished - claimed).total_seconds()
    breakdown["attempt: finish and the rest (threads, folder)"] = attempt - sum(phases.values())
    return {
        "seconds": finished.timestamp() - submitted,
        "seen_seconds": seen - submitted,  # with the client's polling (every second) on top
        "breakdown": breakdown,
        "background": timings["background"],
    }


def through_cli(spec: dict[str, Any], data_root: Path, workdir: Path) -> float:
    """Wall seconds of ``python -m training run`` on the same spec and images, a whole process."""
    time.sleep(IDLE_SECONDS)  # as the service's side: the machine settles
    local = {**spec, "data": {k: v for k, v in spec["data"].items() if k != "dataset"} | {"path": str(data_root)}}
    spec_path = workdir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(local))
    shutil.rmtree(workdir / "run", ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training", "run", str(spec_path), "--out", str(workdir / "run")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def overhead(stack: Stack, dataset: str, data_root: Path, epochs: int, workdir: Path, rounds: int) -> dict[str, Any]:
    """The same job through the service and through `python -m training run`, ``rounds`` of each, alternating."""
    body = job_body(dataset, epochs=epochs, log_every_steps=20)
    services, locals_ = [], []
    for round_ in range(rounds):
        first, second = ("service", "cli") if round_ % 2 == 0 else ("cli", "service")
        for side in (first, second):
            if side == "service":
                services.append(through_service(stack, body))
                print(f"round {round_ + 1}: service {services[-1]['seconds']:.2f} s", file=sys.stderr)
            else:
                locals_.append(through_cli(body["spec"], data_root, workdir))
                print(f"round {round_ + 1}: cli {locals_[-1]:.2f} s", file=sys.stderr)
    service = statistics.median(run["seconds"] for run in services)
    local = statistics.median(locals_)
    breakdown = {
        name: round(statistics.median(run["breakdown"].get(name, 0.0) for run in services), 3)
        for name in services[0]["breakdown"]
    }
    background = {
        name: round(statistics.median(run["background"].get(name, 0) for run in services), 3)
        for name in services[0]["background"]
    }
    return {
        "service_seconds": [round(run["seconds"], 2) for run in services],
        "cli_seconds": [round(seconds, 2) for seconds in locals_],
        "service_engine_seconds": [round(run["breakdown"]["attempt: engine"], 2) for run in services],
        "ratio_per_round": [round(run["seconds"] / seconds, 3) for run, seconds in zip(services, locals_, strict=True)],
        "ratio_of_medians": round(service / local, 3),
        "service_breakdown_median_seconds": breakdown,
        "publisher_beside_the_engine_median": background,
        "cli_imports_seconds": round(cli_imports(), 2),
    }


def cli_imports() -> float:
    """Wall seconds of a process that only imports what ``python -m training run`` imports before training:
    the part of the CLI's time that the service's warmed-up pool child has paid before the job comes."""
    started = time.perf_counter()
    code = "import torch, torchvision, training.engine, training.distributed, training.__main__"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="service and CLI runs each, alternating")
    parser.add_argument("--only", choices=["queue", "events", "overhead"], help="one measurement")
    args = parser.parse_args()
    wanted = {args.only} if args.only else {"queue", "events", "overhead"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = make_cifar_subset(work / "cifar10", per_class=args.per_class, test_per_class=20)
        archive = Path(shutil.make_archive(str(root), "zip", root))
        result: dict[str, Any] = {}
        (work / "stack").mkdir()
        with running_stack(POSTGRES, REDIS, work / "stack", **PRODUCTION_CLOCKS) as stack:
            stack.start_worker()
            dataset = upload(stack, archive)
            if "queue" in wanted:
                result["queue_latency_ms"] = summary(queue_latency(stack, dataset, args.jobs))
            if "events" in wanted:
                result["event_latency_ms"] = summary(event_latency(stack, dataset, args.events))
            if "overhead" in wanted:
                result["overhead"] = overhead(stack, dataset, root, args.epochs, work, args.rounds)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
