"""The service as it is deployed, on this machine, for the integration tests and the service benchmarks:
PostgreSQL and Redis, the API (`finetune serve --workers 0`) and real Celery workers (`finetune worker`)
in subprocesses.

Leases and the sweep run on short clocks here (a lost worker is noticed in seconds, not half a minute).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.app.conftest import _create_postgres_database, drop_postgres_database
from tests.app.servers import REPO, free_port

FAST_CLOCKS = {
    "FT_LEASE_SECONDS": "4",
    "FT_LEASE_RENEW_SECONDS": "1",
    "FT_CANCEL_POLL_SECONDS": "0.2",
    "FT_SWEEP_INTERVAL_SECONDS": "1",
    "FT_REDISPATCH_AFTER_SECONDS": "2",
}


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    home: Path
    api: subprocess.Popen[bytes]
    headers: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(
        self, queues: str = "gpu,cpu", home: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker; ``home``: an FT_HOME of its own (another host's disk), else the API's; ``env``: more
        environment variables (a test hook's, worker.holds)."""
        log = (self.home / f"worker-{len(self.workers)}.log").open("wb")
        command = [sys.executable, "-m", "cli", "worker", "--queues", queues]
        env = {**self.env, **(env or {}), **({"FT_HOME": str(home)} if home is not None else {})}
        worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """kill -9 the worker and its pool child: a host lost mid-job."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    def stop_worker(self, worker: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """SIGTERM to the worker alone, as `docker stop` sends it."""
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 240, every: float = 0.2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return dict(job)
                time.sleep(every)
        raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout}s: {job}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.client() as client:
            found: list[dict[str, Any]] = []
            params: dict[str, int] = {"limit": 100}
            while True:
                page = client.get(f"/v1/jobs/{job_id}/events", params=params).json()
                found += page["data"]
                if not page["has_more"]:
                    return found
                params["after"] = page["last_seq"]


@contextmanager
def running_stack(postgres_url: str, redis_url: str, home: Path, **extra_env: str) -> Iterator[Stack]:
    """PostgreSQL (a fresh database), Redis (a fresh key prefix), migrations, an API key and the API."""
    database_url = _create_postgres_database(postgres_url)
    prefix = f"fttest-stack-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        **FAST_CLOCKS,
        **extra_env,
        "FT_HOME": str(home),
        "FT_DATABASE_URL": database_url,
        "FT_BROKER_URL": redis_url,
        "FT_REDIS_URL": redis_url,
        "FT_BROKER_KEY_PREFIX": prefix,
        "FT_AUTH_ENABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], cwd=REPO, env=env, check=True)
    key = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--project", "integration"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    api_log = (home / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=api_log,
        stderr=api_log,
        start_new_session=True,
    )
    built = Stack(f"http://127.0.0.1:{port}", env, home, api, {"Authorization": f"Bearer {key}"})
    wait_until_ready(built)
    try:
        yield built
    finally:
        for worker in built.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
        api.send_signal(signal.SIGINT)
        api.wait(30)
        drop_postgres_database(postgres_url, database_url)
        import redis

        client = redis.Redis.from_url(redis_url)
        for stale in client.scan_iter(f"{prefix}*"):
            client.delete(stale)
        client.close()


def wait_until_ready(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if stack.api.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the API did not become ready; its log:\n{(stack.home / 'api.log').read_text()[-3000:]}")


def job_body(dataset: str, **training: Any) -> dict[str, Any]:
    return {
        "spec": {
            "backbone": {"name": "resnet18"},
            "data": {"dataset": dataset, "image_size": 32, "batch_size": 32},
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
            "training": {"epochs": 2, "seed": 0, "deterministic": True, "log_every_steps": 2, **training},
        }
    }
