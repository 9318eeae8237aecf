"""Outages and fairness with real parts: a private PostgreSQL cluster and a private redis-server that the
tests stop and start mid-job, the API and real Celery workers in subprocesses, two projects competing for
one worker.

FT_TEST_DB_OUTAGE_SECONDS sets the database outage (default 20: five of the stack's 4 s leases, and past the
longest step of the worker's retry ladder, 5 s; the README's measurement used 60).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.app.servers import REPO, free_port
from tests.integration.stack import Stack, job_body, running_stack

OUTAGE_SECONDS = float(os.environ.get("FT_TEST_DB_OUTAGE_SECONDS", "20"))
PG_BIN = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb as the postgres user into a temporary folder, a free port)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ft-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.start()

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = str(self.folder / "server.log")
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"])

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    """A redis-server of our own that keeps nothing on disk: a restart comes back empty."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    if shutil.which("runuser") is None or not PG_BIN.joinpath("initdb").exists():
        pytest.skip("needs initdb and runuser to start a private PostgreSQL cluster")
    server = PrivatePostgres()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(  # the private servers under the usual stack (overrides the conftest's)
    postgres: PrivatePostgres, redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {"FT_DB_CONNECT_TIMEOUT_SECONDS": "2"}
    with running_stack(postgres.url, redis_server.url, tmp_path_factory.mktemp("stack"), **extra) as built:
        yield built


def submit(client: httpx.Client, body: dict[str, object]) -> str:
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def wait_for_epochs(stack: Stack, job_id: str, epochs: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"]["epoch"] < epochs:
            assert job["status"] in {"queued", "running"}, job
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.3)


def test_a_database_outage_mid_job_costs_no_attempt(stack, postgres, dataset_id):
    worker = stack.start_worker(queues="gpu")
    with stack.client() as client:
        job_id = submit(client, job_body(dataset_id, epochs=3))
    submitted = time.monotonic()
    wait_for_epochs(stack, job_id, 1)  # the rest of the run may end inside the outage: its records wait for it
    postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    postgres.start()
    done = stack.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
    wall = time.monotonic() - submitted
    print(f"\n{OUTAGE_SECONDS:.0f} s database outage: wall {wall:.0f} s, attempt {done['attempt']}, {done['status']}")
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1, done
    assert worker.poll() is None  # the worker rode it out


def test_a_redis_restart_loses_no_task(stack, redis_server, dataset_id):
    worker = stack.start_worker(queues="gpu")
    with stack.client() as client:
        running = submit(client, job_body(dataset_id, epochs=3))
        waiting = submit(client, job_body(dataset_id, epochs=1))  # sent, then lost with the broker
    wait_for_epochs(stack, running, 1)
    redis_server.stop()
    time.sleep(3)
    redis_server.start()
    for job_id in (running, waiting):
        done = stack.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=400)
        assert done["status"] == "succeeded", done
    stack.stop_worker(worker)


def upload_ready(stack: Stack, client: httpx.Client, archive: Path) -> str:
    worker = stack.start_worker(queues="cpu")
    try:
        with archive.open("rb") as file:
            created = client.post("/v1/datasets", files={"file": ("cifar10.zip", file)})
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 120
        while (shown := client.get(f"/v1/datasets/{created.json()['id']}").json())["status"] == "validating":
            assert time.monotonic() < deadline, "validation did not finish"
            time.sleep(0.3)
        assert shown["status"] == "ready", shown
        return str(shown["id"])
    finally:
        stack.stop_worker(worker)


def test_two_projects_compete_for_one_worker_fairly(stack, dataset_id, cifar):
    other_key = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--project", "other"],
        cwd=REPO,
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    other = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30)
    other_dataset = upload_ready(stack, other, cifar[1])
    engine = create_engine(stack.env["FT_DATABASE_URL"])
    with engine.begin() as connection:  # one job in flight per project (the per-project override)
        connection.execute(text("UPDATE projects SET max_running_jobs = 1"))
    engine.dispose()
    with stack.client() as client:
        crowd = [submit(client, job_body(dataset_id, epochs=1, max_steps=2)) for _ in range(4)]
    single = submit(other, job_body(other_dataset, epochs=1, max_steps=2))
    names = {job_id: f"crowd-{n}" for n, job_id in enumerate(crowd, 1)} | {single: "single"}
    worker = stack.start_worker(queues="gpu")
    started: list[str] = []
    deadline = time.monotonic() + 400
    with stack.client() as client:
        while len(started) < len(names):
            assert time.monotonic() < deadline, f"not all jobs ran: {started}"
            for job_id, name in names.items():
                shown = (other if name == "single" else client).get(f"/v1/jobs/{job_id}").json()
                if shown["status"] != "queued" and name not in started:
                    started.append(name)
            time.sleep(0.1)
    other.close()
    print(f"\ndispatch order, one worker: {started}")
    assert started == ["crowd-1", "single", "crowd-2", "crowd-3", "crowd-4"]
    stack.stop_worker(worker)
