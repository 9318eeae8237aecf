"""Many event streams through a real uvicorn server: one reader per process fans events out (Redis sees
one more connection, not one per client), every client gets every event, past the caps a new stream is
a 429, and /healthz answers fast meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.context import Runtime
from tests.app.api.test_uvicorn_live import new_job, run_job_story, sse_events
from tests.app.servers import Server, uvicorn_server

STREAMS = 25


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("streams-home")
    caps = {"FT_MAX_STREAMS_PER_PROCESS": str(STREAMS + 5), "FT_MAX_STREAMS_PER_PROJECT": str(STREAMS)}
    with uvicorn_server(backend, home, **caps) as running:
        yield running


@pytest.fixture
def writer(server, settings) -> Iterator[Runtime]:
    services = Runtime.from_settings(
        settings.model_copy(
            update={"home": server.home, "broker_key_prefix": server.env.get("FT_BROKER_KEY_PREFIX", "")}
        )
    )
    yield services
    services.close()


def redis_clients(settings) -> int | None:
    if not settings.redis_url:
        return None
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return len(client.client_list())
    finally:
        client.close()


def healthz_seconds(server: Server, tries: int = 5) -> float:
    """The median time of /healthz on a kept-alive connection (this machine is shared: one sample is noise)."""
    times = []
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.get("/healthz")
        for _ in range(tries):
            began = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            times.append(time.perf_counter() - began)
    return sorted(times)[tries // 2]


def test_many_streams_share_one_reader_and_the_cap_is_a_429(server, writer, settings):
    job_id = new_job(writer)
    url = f"{server.url}/v1/jobs/{job_id}/events/stream"
    received: list[list[str]] = [[] for _ in range(STREAMS)]
    opened = threading.Barrier(STREAMS + 1)

    def follow(index: int) -> None:
        with httpx.stream("GET", url, timeout=60) as response:
            assert response.status_code == 200
            opened.wait()
            received[index] = [event["event"] for event in sse_events(response)]

    before = redis_clients(settings)
    baseline = server.reset_peak_memory()
    readers = [threading.Thread(target=follow, args=(i,)) for i in range(STREAMS)]
    for thread in readers:
        thread.start()
    opened.wait(timeout=60)
    time.sleep(1.0)  # every stream is waiting for live events now
    during = redis_clients(settings)
    refused = httpx.get(url, timeout=10)
    health_seconds = healthz_seconds(server)

    run_job_story(writer, job_id)
    for thread in readers:
        thread.join(60)
    growth_mib = (server.peak_memory() - baseline) / 1024

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_streams" and "FT_MAX_STREAMS_PER_PROJECT" in error["message"]
    expected = ["status", "step", "epoch", "step", "epoch", "step", "epoch", "status"]
    assert all(events[-len(expected) :] == expected for events in received), received
    assert health_seconds < 0.1, f"/healthz took {health_seconds * 1000:.0f} ms with {STREAMS} streams open"
    assert growth_mib < 32, f"the server grew {growth_mib:.1f} MiB for {STREAMS} streams"
    print(f"\n{STREAMS} streams: /healthz {health_seconds * 1000:.0f} ms (median), server peak +{growth_mib:.1f} MiB")
    if before is not None and during is not None:
        assert during - before <= 2, f"Redis clients went from {before} to {during} for {STREAMS} streams"
    # The streams ended and gave their places back: a new one is admitted.
    with httpx.stream("GET", url, timeout=10) as again:
        assert again.status_code == 200
