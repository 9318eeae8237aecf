"""The live event stream through a real server: it resumes with ``Last-Event-ID`` after the connection is
cut mid-stream, misses and repeats nothing, and ends at the job's terminal status event."""

from __future__ import annotations

import pytest

from app.client import AsyncClient, Client, ConnectionError, NotFound, Retry
from app.statuses import JobStatus
from tests.app.client import worker_side
from tests.app.client.server import FAST_RETRY, free_port


def test_a_cut_stream_resumes_from_the_last_event_and_ends_at_the_terminal_one(proxy, api_key, worker_factory):
    job_id = worker_side.queued_job(worker_factory)  # seq 1: queued
    with Client(proxy.url, api_key, retry=FAST_RETRY) as client:
        events = client.jobs.stream_events(job_id)
        seen = [next(events)]
        worker_side.start(worker_factory, job_id)  # seq 2
        for at in (1, 2, 3):  # seq 3..5
            worker_side.step(worker_factory, job_id, at)
        seen += [next(events) for _ in range(4)]
        proxy.cut()  # the connection drops with the client at seq 5
        worker_side.step(worker_factory, job_id, 4)  # written while nobody listens
        worker_side.epoch(worker_factory, job_id, 1)
        seen += [next(events) for _ in range(2)]
        proxy.cut()  # and again, with the client at seq 7
        for at in (5, 6, 7, 8):
            worker_side.step(worker_factory, job_id, at)
        worker_side.epoch(worker_factory, job_id, 2)
        worker_side.finish(worker_factory, job_id)
        seen += list(events)  # ends by itself at the terminal event
        finished = client.jobs.wait(job_id)  # a finished job's stream replays, then ends
    assert [event.seq for event in seen] == list(range(1, 14))
    assert seen[-1].is_terminal and seen[-1].data["to"] == "succeeded"
    assert [event.is_terminal for event in seen].count(True) == 1
    assert finished.status == JobStatus.SUCCEEDED
    resumes = [head.get("last-event-id") for head in proxy.request_heads("/events/stream")]
    assert resumes[:3] == [None, "5", "7"]


@pytest.mark.anyio
async def test_the_async_stream_resumes_after_a_cut_too(proxy, api_key, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker_side.start(worker_factory, job_id)
    async with AsyncClient(proxy.url, api_key, retry=FAST_RETRY) as client:
        events = client.jobs.stream_events(job_id)
        seen = [await anext(events), await anext(events)]
        proxy.cut()
        worker_side.step(worker_factory, job_id, 1)
        worker_side.finish(worker_factory, job_id, JobStatus.FAILED)
        seen += [event async for event in events]
        finished = await client.jobs.get(job_id)
    assert [event.seq for event in seen] == [1, 2, 3, 4]
    assert seen[-1].data["to"] == "failed"
    assert finished.error is not None and finished.error.code == "non_finite_loss"
    assert [head.get("last-event-id") for head in proxy.request_heads("/events/stream")][:2] == [None, "2"]


def test_the_stream_of_an_unknown_job_is_not_found(api):
    with pytest.raises(NotFound):
        next(api.jobs.stream_events("ftjob_nope"))


def test_a_stream_that_cannot_reconnect_raises_connection_error():
    retry = Retry(reconnects=2, backoff=0.01, max_backoff=0.02)
    with (
        Client(f"http://127.0.0.1:{free_port()}", "ftk_x", retry=retry) as client,
        pytest.raises(ConnectionError) as error,
    ):
        next(client.jobs.stream_events("ftjob_x"))
    assert "2 reconnections" in str(error.value)
