"""Live events and big downloads through a real uvicorn server: the SSE stream delivers events as they
are written (through Redis in production, by polling the database embedded), a reconnect with
Last-Event-ID misses nothing, the stream closes after the final status, and a large download keeps
the server's memory flat."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app.context import Runtime
from app.db.session import transaction
from app.services.job_records import append_event, record_epoch_metrics, register_artifact
from app.services.job_state import claim_job, finish_job
from app.statuses import EventType, JobStatus
from tests.app.factories import make_job
from tests.app.servers import Server, uvicorn_server

MB = 1 << 20


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory) -> Iterator[Server]:
    with uvicorn_server(backend, tmp_path_factory.mktemp("live-home")) as running:
        yield running


@pytest.fixture
def writer(server, settings) -> Iterator[Runtime]:
    """The test's side of the database: what a worker would write, mirrored to the server's Redis."""
    services = Runtime.from_settings(
        settings.model_copy(
            update={"home": server.home, "broker_key_prefix": server.env.get("FT_BROKER_KEY_PREFIX", "")}
        )
    )
    yield services
    services.close()


def sse_events(response: httpx.Response) -> Iterator[dict]:
    """Parsed SSE events (id, event, data) from a streaming response."""
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def run_job_story(services: Runtime, job_id: str, pause: float = 0.05) -> None:
    """A worker's story in short: claimed, three epochs, succeeded."""
    with transaction(services.factory) as session:
        assert claim_job(session, job_id, "w1", 60)
    for epoch in (1, 2, 3):
        time.sleep(pause)
        with transaction(services.factory) as session:
            append_event(session, job_id, EventType.STEP, {"step": epoch * 10}, f"step {epoch * 10}")
            record_epoch_metrics(session, job_id, {"epoch": epoch, "val_acc": 0.1 * epoch}, owner="w1")
    time.sleep(pause)
    with transaction(services.factory) as session:
        finish_job(session, job_id, "w1", JobStatus.SUCCEEDED)


def new_job(services: Runtime) -> str:
    with transaction(services.factory) as session:
        return make_job(session).id


def test_events_arrive_live_in_order_and_the_stream_ends_after_the_final_status(server, writer):
    job_id = new_job(writer)
    story = threading.Thread(target=run_job_story, args=(writer, job_id, 0.3))
    received: list[tuple[dict, float]] = []
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events/stream", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        story.start()
        for event in sse_events(response):
            received.append((event, time.monotonic()))
    story.join()
    seqs = [int(e["id"]) for e, _ in received]
    assert seqs == list(range(1, len(seqs) + 1))  # every event, in order, the seq as the SSE id
    payloads = [json.loads(e["data"]) for e, _ in received]
    assert [p["type"] for p in payloads].count("epoch") == 3
    assert payloads[-1]["type"] == "status" and payloads[-1]["data"]["to"] == "succeeded"
    # Live: the epochs came while the story ran (0.3 s apart), not all at the end.
    epoch_times = [t for e, t in received if e["event"] == "epoch"]
    assert epoch_times[-1] - epoch_times[0] > 0.4


def test_a_reconnect_with_last_event_id_misses_nothing(server, writer):
    job_id = new_job(writer)
    story = threading.Thread(target=run_job_story, args=(writer, job_id, 0.2))
    first: list[int] = []
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events/stream", timeout=30) as response:
        story.start()
        for event in sse_events(response):
            first.append(int(event["id"]))
            if len(first) == 4:
                break  # the connection drops
    rest: list[int] = []
    headers = {"Last-Event-ID": str(first[-1])}
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events/stream", headers=headers, timeout=30) as response:
        rest = [int(event["id"]) for event in sse_events(response)]
    story.join()
    assert first + rest == list(range(1, first[-1] + len(rest) + 1))


def test_a_finished_jobs_stream_replays_everything_and_closes(server, writer):
    job_id = new_job(writer)
    run_job_story(writer, job_id, pause=0)
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events/stream?after=3", timeout=30) as response:
        seqs = [int(event["id"]) for event in sse_events(response)]
    assert seqs[0] == 4 and seqs == list(range(4, seqs[-1] + 1))
    bad = httpx.get(f"{server.url}/v1/jobs/{job_id}/events/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert httpx.get(f"{server.url}/v1/jobs/ftjob_nope/events/stream").status_code == 404


def test_a_big_download_keeps_the_server_memory_flat(server, writer, tmp_path):
    job_id = new_job(writer)
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for i in range(120):
            out.write(bytes([i]) * MB)
    with big.open("rb") as stream, transaction(writer.factory) as session:
        stored = writer.store.put(f"jobs/{job_id}/model.safetensors", stream)
        register_artifact(session, job_id, "model.safetensors", stored)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.get(f"/v1/jobs/{job_id}/artifacts")  # warm up
        baseline = server.reset_peak_memory()
        size = 0
        with client.stream("GET", f"/v1/jobs/{job_id}/weights") as response:
            assert response.headers["content-length"] == str(120 * MB)
            for chunk in response.iter_bytes():
                size += len(chunk)
        peak = server.peak_memory()
    assert size == 120 * MB
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 20, f"the server's peak memory grew {growth_mb:.1f} MB for a 120 MB download"
