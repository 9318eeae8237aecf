"""``GET /v1/jobs/{id}/events/stream``: a job's events as server-sent events, live.

Each event's SSE id is its ``seq``. A client that reconnects with ``Last-Event-ID`` (or ``?after=``)
gets every event after that one: the database is read first (it holds them all), then the job's Redis
stream is tailed; an event is committed to the database before it reaches the stream, so a gap seen in
the stream is filled from the database. Without Redis (the embedded mode) the database is polled.
The stream ends after the job's terminal status event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette.sse import EventSourceResponse

from app.api.deps import CallerDep, SessionFactoryDep
from app.api.errors import error_responses
from app.db.session import transaction
from app.errors import Unprocessable
from app.events import EventStream, event_payload
from app.repositories import job_records
from app.schemas.jobs import JobEvent
from app.services import jobs

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PAGE = 500
POLL_SECONDS = 0.2  # the embedded mode's database polling
BLOCK_MS = 10_000  # how long one Redis read waits before the database is looked at again
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
    factory: sessionmaker[Session], stream: EventStream | None, job_id: str, after: int, request: Request
) -> AsyncIterator[dict[str, str]]:
    """Events with seq > ``after``, as they come, until the terminal status event."""
    last = after
    position = await _last_id(stream, job_id)  # before the database read: nothing falls in between
    while True:
        events = await run_in_threadpool(_events_after, factory, job_id, last)
        for event in events:
            yield _sse(event)
            last = event["seq"]
            if is_terminal(event):
                return
        if len(events) == PAGE:
            continue  # more to replay
        if stream is None or position is None:
            await asyncio.sleep(POLL_SECONDS)
        else:
            while True:  # tail the stream while it is contiguous with what was sent
                try:
                    position, live = await stream.wait(job_id, position, BLOCK_MS)
                except redis.RedisError:
                    log.warning("job %s: the event stream failed; reading the database instead", job_id)
                    await asyncio.sleep(POLL_SECONDS)
                    break
                fresh = [e for e in live if e["seq"] > last]
                if not live or any(e["seq"] != last + 1 + i for i, e in enumerate(fresh)):
                    break  # a timeout, or a gap (an event whose XADD was lost): read the database
                for event in fresh:
                    yield _sse(event)
                    last = event["seq"]
                    if is_terminal(event):
                        return
        if await request.is_disconnected():
            return


async def _last_id(stream: EventStream | None, job_id: str) -> str | None:
    """Where to start tailing the stream; None when there is no stream or Redis does not answer (the
    database is polled then)."""
    if stream is None:
        return None
    try:
        return await stream.last_id(job_id)
    except redis.RedisError:
        log.warning("job %s: the event stream is unreachable; polling the database", job_id)
        return None


@router.get(
    "/{job_id}/events/stream",
    summary="Follow a job's events (server-sent events)",
    responses={
        200: {"description": "A text/event-stream of job events", "content": {"text/event-stream": {}}},
        **error_responses(404),
    },
)
async def stream_events(
    job_id: Annotated[str, Path(max_length=64)],
    request: Request,
    caller: CallerDep,
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
    stream: EventStream | None = request.app.state.stream
    return EventSourceResponse(follow(factory, stream, job_id, start, request), ping=PING_SECONDS)
