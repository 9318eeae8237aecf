"""One reader of live events per API process, fanning them out to that process's SSE clients.

Each SSE client subscribes to its job here and gets an ``asyncio.Queue``; one task reads every followed
job at once (a single ``XREAD`` over all their Redis streams, or without Redis one database read per
followed job per tick) and puts each event on the queues of that job's followers. So a thousand clients
cost one Redis connection and one reader, not a poll each. A client whose queue is full misses events and
sees a gap in ``seq``, which it fills from the database, as it does at connect.

Caps: at most ``max_streams_per_process`` clients in this process and ``max_streams_per_project`` per
project; past them a new stream is a 429 that names the setting. A stream holds a ``StreamPlace`` from
before its response starts (the 429 must come before a 200) until its response ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import transaction
from app.errors import TooManyRequests
from app.events import EventStream, event_payload
from app.repositories import job_records

log = logging.getLogger(__name__)

QUEUE_EVENTS = 1000  # events a slow client may fall behind before it reads the gap from the database
POLL_SECONDS = 0.2  # without Redis: how often the reader looks at the database
BLOCK_MS = 1000  # one XREAD's wait; a job followed meanwhile joins the next read


@dataclass
class _Followed:
    queues: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    stream_id: str = "0-0"  # the Redis stream position read up to
    seq: int = 0  # without Redis: the last seq read from the database
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its start position is known


class EventHub:
    def __init__(
        self, factory: sessionmaker[Session], stream: EventStream | None, max_streams: int, max_per_project: int
    ) -> None:
        self.factory = factory
        self.stream = stream
        self.max_streams = max_streams
        self.max_per_project = max_per_project
        self.jobs: dict[str, _Followed] = {}
        self.per_project: Counter[str] = Counter()
        self.total = 0
        self.reads = 0  # rounds the reader has done (for tests and metrics)
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def _admit(self, project_id: str) -> None:
        if self.total >= self.max_streams:
            raise TooManyRequests(
                f"this server already serves {self.total} event streams, its limit (FT_MAX_STREAMS_PER_PROCESS); "
                "read GET /v1/jobs/{id}/events instead, or try again later",
                code="too_many_streams",
            )
        if self.per_project[project_id] >= self.max_per_project:
            raise TooManyRequests(
                f"this project already has {self.per_project[project_id]} open event streams on this server, "
                "its limit (FT_MAX_STREAMS_PER_PROJECT); close one first",
                code="too_many_streams",
            )

    def reserve(self, project_id: str) -> StreamPlace:
        """Count a stream before its response starts (a 429 must come before the 200); the caller gives the
        place back with ``StreamPlace.release`` when the response ends."""
        self._admit(project_id)
        self.total += 1
        self.per_project[project_id] += 1
        return StreamPlace(self, project_id)

    def _release(self, project_id: str) -> None:
        self.total -= 1
        self.per_project[project_id] -= 1
        if self.per_project[project_id] <= 0:
            del self.per_project[project_id]

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the job's events from now on (the caller reads the database for what came before)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        followed = self.jobs.get(job_id)
        if followed is None:  # the first follower finds the start position; the others wait for it
            followed = self.jobs[job_id] = _Followed()
            try:
                await self._start_position(job_id, followed)
            finally:
                followed.ready.set()
        else:
            await followed.ready.wait()
        followed.queues.add(queue)
        self._ensure_reader()
        try:
            yield queue
        finally:
            followed.queues.discard(queue)
            if not followed.queues and self.jobs.get(job_id) is followed:
                del self.jobs[job_id]

    async def _start_position(self, job_id: str, followed: _Followed) -> None:
        """Where the reader starts for a newly followed job: now (set before the follower's database read,
        so that every later event is read by one or the other)."""
        if self.stream is not None:
            try:
                followed.stream_id = await self.stream.last_id(job_id)
                return
            except redis.RedisError:
                log.warning("job %s: the event stream is unreachable; reading the database", job_id)
        followed.seq = await run_in_threadpool(self._max_seq, job_id)

    def _max_seq(self, job_id: str) -> int:
        with transaction(self.factory) as session:
            return job_records.last_event_seq(session, job_id)

    def _ensure_reader(self) -> None:
        self._wake.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="event-hub")

    async def _read_forever(self) -> None:
        while True:
            if not self.jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._read_once()
            except Exception:
                log.warning("the event reader failed; retrying", exc_info=True)
                await asyncio.sleep(POLL_SECONDS)
            self.reads += 1

    async def _read_once(self) -> None:
        if self.stream is not None:
            try:
                await self._read_stream(self.stream)
                return
            except redis.RedisError:
                log.warning("the event stream failed; reading the database this round", exc_info=True)
        await asyncio.sleep(POLL_SECONDS)
        await self._read_database()

    async def _read_stream(self, stream: EventStream) -> None:
        positions = {
            stream.key(job_id): followed.stream_id for job_id, followed in self.jobs.items() if followed.ready.is_set()
        }
        if not positions:
            await asyncio.sleep(POLL_SECONDS)
            return
        reply: Any = await stream.aio.xread(positions, block=BLOCK_MS, count=500)  # type: ignore[arg-type]
        for key, entries in reply or []:
            job_id = key.decode().removeprefix(stream.key(""))
            followed = self.jobs.get(job_id)
            if followed is None or not entries:
                continue
            followed.stream_id = entries[-1][0].decode()
            for _, fields in entries:
                self._deliver(followed, _decode(fields[b"event"]))

    async def _read_database(self) -> None:
        wanted = {job_id: followed.seq for job_id, followed in self.jobs.items() if followed.ready.is_set()}
        found = await run_in_threadpool(self._events_since, wanted)
        for job_id, events in found.items():
            followed = self.jobs.get(job_id)
            if followed is None:
                continue
            for event in events:
                followed.seq = max(followed.seq, int(event["seq"]))
                self._deliver(followed, event)

    def _events_since(self, wanted: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        with transaction(self.factory) as session:
            found: dict[str, list[dict[str, Any]]] = {}
            for job_id, seq in wanted.items():
                rows = job_records.events_after(session, job_id, seq, QUEUE_EVENTS)
                found[job_id] = [event_payload(row) for row in rows]
            return found

    @staticmethod
    def _deliver(followed: _Followed, event: dict[str, Any]) -> None:
        for queue in list(followed.queues):
            with contextlib.suppress(asyncio.QueueFull):  # that client reads the gap from the database
                queue.put_nowait(event)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class StreamPlace:
    """One stream's place under the caps, given back once: a second ``release`` does nothing, so every
    path that may end a stream (its generator, its response, an error before either) can call it."""

    def __init__(self, hub: EventHub, project_id: str) -> None:
        self._hub: EventHub | None = hub
        self.project_id = project_id

    def release(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub._release(self.project_id)


def _decode(raw: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(raw)
    return event
