"""``GET /v1/jobs/{id}/events/stream``: a job's events as server-sent events, live.

Each event's SSE id is its ``seq``. A client that reconnects with ``Last-Event-ID`` (or ``?after=``)
gets every event after that one: the database is read first (it holds them all), then live events come
from the process's one reader (``app.api.event_hub``: the jobs' Redis streams, or without Redis the
database); an event is committed to the database before it reaches the stream, so a gap seen live is
filled from the database. The stream ends after the job's terminal status event. Streams are capped per
process and per project (429); a stream's place is given back when its response ends, however it ends
(``CountedEventStream``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import SessionFactoryDep, StreamingCallerDep
from app.api.errors import error_responses
from app.api.event_hub import EventHub, StreamPlace
from app.db.session import transaction
from app.errors import Unprocessable
from app.events import event_payload
from app.repositories import job_records
from app.schemas.jobs import JobEvent
from app.services import jobs

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PAGE = 500
PING_SECONDS = 15


def is_terminal(event: dict[str, Any]) -> bool:
    return JobEvent.model_validate(event).is_terminal


def _sse(event: dict[str, Any]) -> dict[str, str]:
    return {"id": str(event["seq"]), "event": str(event["type"]), "data": json.dumps(event)}


def _events_after(factory: sessionmaker[Session], job_id: str, after: int) -> list[dict[str, Any]]:
    with transaction(factory) as session:
        rows, _ = job_records.events_page(session, job_id, types=[], after=after, limit=PAGE)
        return [event_payload(row) for row in rows]


async def follow(
    factory: sessionmaker[Session], hub: EventHub, job_id: str, after: int, request: Request
) -> AsyncIterator[dict[str, str]]:
    """Events with seq > ``after``, as they come, until the terminal status event. The process's one
    reader (``EventHub``) brings live events; the database is read at the start and to fill a gap."""
    last = after
    async with hub.subscribe(job_id) as live:  # before the database read: nothing falls in between
        while True:
            events = await run_in_threadpool(_events_after, factory, job_id, last)
            for event in events:
                yield _sse(event)
                last = event["seq"]
                if is_terminal(event):
                    return
            if len(events) == PAGE:
                continue  # more to replay
            while True:  # live events while they are contiguous with what was sent
                try:
                    event = await asyncio.wait_for(live.get(), timeout=PING_SECONDS)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if event["seq"] <= last:
                    continue  # already sent from the database
                if event["seq"] != last + 1:
                    break  # a gap (an event the stream lost, or a full queue): read the database
                yield _sse(event)
                last = event["seq"]
                if is_terminal(event):
                    return


class CountedEventStream(EventSourceResponse):
    """An event stream that gives its place under the caps back when the response ends, however it ends.

    The generator's own ``finally`` is not enough: a client that leaves while the response's first bytes
    are still being sent (a full socket) cancels the response before the generator has started, and a
    generator that never started runs no ``finally``, not even when it is collected."""

    def __init__(self, content: AsyncIterator[dict[str, str]], place: StreamPlace, ping: int) -> None:
        super().__init__(content, ping=ping)
        self.place = place

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.place.release()


@router.get(
    "/{job_id}/events/stream",
    summary="Follow a job's events (server-sent events)",
    responses={
        200: {"description": "A text/event-stream of job events", "content": {"text/event-stream": {}}},
        **error_responses(404, 429),
    },
)
async def stream_events(
    job_id: Annotated[str, Path(max_length=64)],
    request: Request,
    caller: StreamingCallerDep,
    factory: SessionFactoryDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Start after this seq.")] = None,
) -> EventSourceResponse:
    """Every event of the job after ``Last-Event-ID`` (or ``after``), live; closes after the final status."""

    def check() -> None:
        with transaction(factory) as session:
            jobs.get_job(session, caller.project_id, job_id)

    await run_in_threadpool(check)
    start = after or 0
    if last_event_id:
        if not last_event_id.isdigit():
            raise Unprocessable("Last-Event-ID must be an event seq (an integer)", param="Last-Event-ID")
        start = max(start, int(last_event_id))
    hub: EventHub = request.app.state.event_hub
    place = hub.reserve(caller.project_id)  # 429 past the caps, before the response starts
    try:
        return CountedEventStream(follow(factory, hub, job_id, start, request), place, ping=PING_SECONDS)
    except BaseException:
        place.release()
        raise
