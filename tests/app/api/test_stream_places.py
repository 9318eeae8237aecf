"""An event stream's place under the caps is given back however the stream ends: a client that leaves while
the response's first bytes are still being sent (before the generator has run) must not keep its place, or a
few dropped connections would lock a project out of live events until the server restarts.

The streams are driven at the ASGI level, as a server drives them: a server's ``send`` waits while the
client's socket is full, and its ``receive`` reports the client's disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from app.api.event_hub import EventHub
from app.db.session import transaction
from app.main import create_app
from tests.app.factories import make_job

pytestmark = pytest.mark.anyio

CAP = 5


class Stream:
    """One ``GET .../events/stream`` through the app, its client under the test's control."""

    def __init__(self, app: FastAPI, job_id: str, reads: bool = True) -> None:
        """``reads``: False for a client that reads nothing: the server's first write waits for the socket to
        drain, and is still waiting when the client's disconnect is noticed."""
        self.app, self.path, self.reads = app, f"/v1/jobs/{job_id}/events/stream", reads
        self.requested = False
        self.messages: list[dict] = []
        self.started = asyncio.Event()  # the response's status line was sent
        self.gone = asyncio.Event()  # the client has disconnected
        self.task: asyncio.Task[None] | None = None

    def open(self) -> Stream:
        self.task = asyncio.create_task(self.app(self.scope(), self.receive, self.send))
        return self

    def scope(self) -> dict:
        headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"text/event-stream")]
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }

    async def receive(self) -> dict:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.start":
            self.started.set()
            if not self.reads:
                await asyncio.Event().wait()  # a socket that never drains: the write waits until cancelled

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    async def answered(self) -> int:
        await asyncio.wait_for(self.started.wait(), 30)
        return self.status

    async def close(self) -> None:
        self.gone.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
def capped_app(settings) -> Iterator[FastAPI]:
    settings.max_streams_per_project = CAP
    application = create_app(settings)
    yield application
    application.state.queue.close()
    application.state.engine.dispose()


def job_of(app: FastAPI) -> str:
    with transaction(app.state.session_factory) as session:
        return make_job(session).id


def held(hub: EventHub) -> tuple[int, dict[str, int]]:
    return hub.total, dict(hub.per_project)


async def test_streams_dropped_before_their_first_event_give_their_places_back(capped_app):
    hub: EventHub = capped_app.state.event_hub
    job_id = job_of(capped_app)

    # CAP clients at once, each gone while the status line is still being written (the generator has not run).
    dropped = [Stream(capped_app, job_id, reads=False).open() for _ in range(CAP)]
    assert [await stream.answered() for stream in dropped] == [200] * CAP
    assert held(hub)[0] == CAP  # all counted while they are there
    for stream in dropped:
        await stream.close()
    assert held(hub) == (0, {})

    # At the cap again: CAP streams are accepted and the next is a 429, so the places were really free.
    streams = [Stream(capped_app, job_id).open() for _ in range(CAP)]
    assert [await stream.answered() for stream in streams] == [200] * CAP
    refused = Stream(capped_app, job_id).open()
    assert await refused.answered() == 429
    await refused.close()
    for stream in streams:
        await stream.close()
    assert held(hub) == (0, {})


async def test_a_stream_dropped_after_its_first_bytes_gives_its_place_back(capped_app):
    hub: EventHub = capped_app.state.event_hub
    job_id = job_of(capped_app)
    streams = [Stream(capped_app, job_id).open() for _ in range(CAP)]
    assert [await stream.answered() for stream in streams] == [200] * CAP
    await asyncio.sleep(0.2)  # each generator is waiting for live events now
    for stream in streams:
        await stream.close()
    assert held(hub) == (0, {})
