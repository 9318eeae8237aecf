"""Hostile requests against a real uvicorn server: a 64 MiB body is refused as it streams, with the
server's memory flat, and a flood of them leaves /healthz fast; two dozen dry runs of a billion epochs
answer in bounded time while /healthz stays fast and the server's memory bounded; concurrent creates with
one Idempotency-Key make one job, as many with distinct keys make as many jobs, each sent to the broker
once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from app.context import Runtime
from app.db.models import Job
from app.db.session import transaction
from app.dispatch.names import GPU_QUEUE, TRAIN_JOB
from tests.app.api.test_uvicorn_streams import healthz_seconds
from tests.app.factories import make_ready_dataset
from tests.app.helpers import broker_messages, job_body
from tests.app.servers import REPO, Server, uvicorn_server

MIB = 1 << 20
# The 200 at once: requests past the connection pool wait on the event loop (app.api.deps.db_slot),
# a racing twin waits for the first create's commit and replays it, and creates on one data set share its lock.
CONCURRENT = int(os.environ.get("FT_TEST_CONCURRENT", "200"))


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("hostile-home")
    lifted = {  # an operator who lifted them: every create here is admitted and sent at once
        "FT_MAX_EPOCHS": str(10**10),
        "FT_MAX_TOTAL_STEPS": str(10**12),
        "FT_PROJECT_MAX_QUEUED_JOBS": str(10**6),
        "FT_PROJECT_MAX_RUNNING_JOBS": str(10**6),
    }
    with uvicorn_server(backend, home, **lifted) as running:
        yield running


@pytest.fixture
def services(server, settings) -> Iterator[Runtime]:
    """The test's side of the server's database and broker."""
    found = Runtime.from_settings(
        settings.model_copy(
            update={"home": server.home, "broker_key_prefix": server.env.get("FT_BROKER_KEY_PREFIX", "")}
        )
    )
    yield found
    found.close()


@pytest.fixture
def dataset_id(services) -> str:
    with transaction(services.factory) as session:
        return make_ready_dataset(session, per_class={"cat": 40, "dog": 40}).id


def big_body(mib: int = 64) -> Iterator[bytes]:
    """A JSON body of ``mib`` MiB, chunked: no Content-Length to refuse it by."""
    yield b'{"spec": {"data": {"dataset": "'
    for _ in range(mib):
        yield b"x" * MIB
    yield b'"}}'


def post_big_body(client: httpx.Client) -> httpx.Response | None:
    try:
        return client.post("/v1/jobs", content=big_body(), headers={"content-type": "application/json"})
    except httpx.TransportError:  # the server answered and closed while the client still sent
        return None


def test_a_64_mib_body_is_refused_as_it_streams_with_flat_memory(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.get("/v1/jobs")
        baseline = server.reset_peak_memory()
        began = time.perf_counter()
        response = post_big_body(client)
        took = time.perf_counter() - began
        growth_mib = (server.peak_memory() - baseline) / 1024
    if response is not None:
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert growth_mib < 8, f"the server grew {growth_mib:.1f} MiB for a 64 MiB body"
    assert took < 10
    print(f"\n64 MiB body: refused in {took * 1000:.0f} ms, server peak memory +{growth_mib:.1f} MiB")


FLOOD = """
import sys, time, httpx
from tests.app.api.test_uvicorn_hostile import post_big_body
url, seconds = sys.argv[1], float(sys.argv[2])
answers = []
with httpx.Client(base_url=url, timeout=60) as client:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = post_big_body(client)
        answers.append("closed" if response is None else str(response.status_code))
print(" ".join(answers))
"""


def test_a_flood_of_64_mib_bodies_is_refused_while_healthz_stays_fast(server):
    """2 clients (processes of their own) sending 64 MiB bodies over and over: each is refused, the server
    holds at most the cap per request, and /healthz answers meanwhile."""
    baseline = server.reset_peak_memory()
    command = [sys.executable, "-c", FLOOD, server.url, "6"]
    senders = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(2.0)  # the senders have started (imports) and flood
    health = healthz_seconds(server, tries=9)
    answers = [answer for sender in senders for answer in sender.communicate(timeout=120)[0].split()]
    growth_mib = (server.peak_memory() - baseline) / 1024
    assert answers and set(answers) <= {"413", "closed"}, set(answers)
    assert health < 0.1, f"/healthz took {health * 1000:.0f} ms (median) during the flood"
    assert growth_mib < 32, f"the server grew {growth_mib:.1f} MiB for 2 clients sending 64 MiB bodies"
    print(f"\n{len(answers)} bodies of 64 MiB from 2 clients: /healthz {health * 1000:.0f} ms, +{growth_mib:.1f} MiB")


def test_dry_runs_of_a_billion_epochs_answer_while_healthz_stays_fast(server, dataset_id):
    body = job_body(dataset_id, training={"epochs": 10**9}, scheduler={"name": "cosine", "interval": "step"})
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/v1/jobs/validate", json=job_body(dataset_id)).status_code == 200  # torch imported
    answers: list[tuple[int, float]] = []

    def dry_run() -> None:
        began = time.perf_counter()
        status = httpx.post(f"{server.url}/v1/jobs/validate", json=body, timeout=120).status_code
        answers.append((status, time.perf_counter() - began))

    baseline = server.reset_peak_memory()
    runs = [threading.Thread(target=dry_run) for _ in range(24)]
    for thread in runs:
        thread.start()
    time.sleep(0.3)
    health = healthz_seconds(server)
    for thread in runs:
        thread.join(120)
    growth_mib = (server.peak_memory() - baseline) / 1024
    assert len(answers) == 24
    assert {status for status, _ in answers} <= {200, 429}, answers  # answered, or refused while busy
    assert sum(status == 200 for status, _ in answers) >= 2
    slowest = max(seconds for _, seconds in answers)
    assert slowest < 60, f"the slowest of 24 dry runs took {slowest:.1f}s"
    assert health < 0.1, f"/healthz took {health * 1000:.0f} ms during 24 dry runs"
    assert growth_mib < 128, f"the server grew {growth_mib:.0f} MiB during 24 dry runs"
    print(
        f"\n24 dry runs of 1e9 steps: slowest {slowest:.1f}s; /healthz meanwhile {health * 1000:.0f} ms; "
        f"server peak memory +{growth_mib:.0f} MiB"
    )


async def create_all(server: Server, bodies: list[tuple[dict, dict[str, str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/jobs", json=body, headers=headers) for body, headers in bodies))


def sent_job_ids(services: Runtime) -> list[str]:
    messages = broker_messages(SimpleNamespace(state=SimpleNamespace(queue=services.queue)), GPU_QUEUE)
    assert all(message["task"] == TRAIN_JOB for message in messages)
    return [message["args"][0] for message in messages]


def job_count(services: Runtime) -> int:
    with transaction(services.factory) as session:
        return session.query(Job).count()


def test_concurrent_creates_with_one_key_make_one_job_and_with_distinct_keys_one_each(server, services, dataset_id):
    # The broker's marker set before anything is sent: a server's first sweep otherwise takes the marker's absence
    # for a Redis that lost its messages and re-sends every job sent so far (harmless, but not countable).
    services.queue.broker_emptied()
    sent_job_ids(services)  # an empty queue to count from
    before = job_count(services)
    same = asyncio.run(create_all(server, [(job_body(dataset_id), {"Idempotency-Key": "one-key"})] * CONCURRENT))
    made = {r.json()["id"] for r in same if r.status_code in (200, 201)}
    others = {(r.status_code, r.json()["error"]["code"]) for r in same if r.status_code not in (200, 201)}
    assert len(made) == 1, made
    assert others <= {(409, "idempotency_key_in_use")}, others  # a racing twin is told to retry
    assert job_count(services) == before + 1
    assert sent_job_ids(services) == list(made)

    distinct = [(job_body(dataset_id), {"Idempotency-Key": f"key-{i}"}) for i in range(CONCURRENT)]
    answers = asyncio.run(create_all(server, distinct))
    assert [r.status_code for r in answers] == [201] * CONCURRENT, {r.status_code for r in answers}
    ids = [r.json()["id"] for r in answers]
    assert len(set(ids)) == CONCURRENT
    assert job_count(services) == before + 1 + CONCURRENT
    time.sleep(0.5)  # the last sends after their commits
    sent = sent_job_ids(services)
    assert sorted(sent) == sorted(ids), f"{len(sent)} messages for {CONCURRENT} jobs"
