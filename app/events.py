"""Live job events: the database records every event; a Redis stream per job carries them to clients.

``append_event`` (``app.services.job_records``) writes an event row with the job's next ``seq`` and
asks for it to be mirrored here; once the transaction commits, ``install_stream_hooks``' hook XADDs it to
``finetune:events:<job_id>`` (approximate MAXLEN). An event is in the database before it is in the
stream, so a reader can always fill a gap from the database. Without Redis (the embedded mode) there is
no stream and readers poll the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import JobEvent
from app.dispatch.after_commit import listen_outermost
from app.schemas.jobs import JobEvent as JobEventSchema

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000  # events kept per job in Redis; the database keeps them all
STREAM_TTL_SECONDS = 7 * 24 * 3600  # a stream expires a week after its last event
READ_TIMEOUT = 30.0  # seconds a blocking stream read may take on the socket
_PENDING = "finetune.events_to_stream"


def event_payload(row: JobEvent) -> dict[str, Any]:
    """An event as the API shows it (and the stream and SSE carry it)."""
    return JobEventSchema.from_row(row).model_dump(mode="json")


class EventStream:
    """The Redis side: a stream per job, written synchronously (after commits), read asynchronously (SSE)."""

    def __init__(self, url: str, prefix: str = "") -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self._async: aioredis.Redis | None = None

    def key(self, job_id: str) -> str:
        return f"{self.prefix}finetune:events:{job_id}"

    def publish(self, payloads: Sequence[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for payload in payloads:
            key = self.key(payload["job_id"])
            pipe.xadd(key, {"event": json.dumps(payload)}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(key, STREAM_TTL_SECONDS)
        pipe.execute()

    def check(self) -> None:
        self.client.ping()

    @property
    def aio(self) -> aioredis.Redis:
        if self._async is None:
            # Reads block for up to BLOCK_MS (app.api.live): the socket must wait longer than that.
            self._async = aioredis.Redis.from_url(self.url, socket_connect_timeout=3, socket_timeout=READ_TIMEOUT)
        return self._async

    async def last_id(self, job_id: str) -> str:
        """The id of the stream's newest entry ("0-0" when empty): where a reader starts to wait."""
        entries: Any = await self.aio.xrevrange(self.key(job_id), count=1)  # redis-py's types are loose
        return str(entries[0][0].decode()) if entries else "0-0"

    async def wait(self, job_id: str, after_id: str, block_ms: int) -> tuple[str, list[dict[str, Any]]]:
        """Entries after ``after_id``, waiting up to ``block_ms`` for one: (the last id read, the events)."""
        reply: Any = await self.aio.xread({self.key(job_id): after_id}, block=block_ms, count=500)
        if not reply:
            return after_id, []
        entries = reply[0][1]
        events = [json.loads(fields[b"event"]) for _, fields in entries]
        return str(entries[-1][0].decode()), events

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None


def mirror_after_commit(session: Session, row: JobEvent) -> None:
    """Ask for ``row`` to go to the job's stream once the session's transaction commits."""
    session.info.setdefault(_PENDING, []).append(row)


def install_stream_hooks(factory: sessionmaker[Session], stream: EventStream | None) -> None:
    """Mirror committed events to ``stream``; with no stream, drop them (the database is the record)."""

    def after_commit(session: Session) -> None:
        rows: list[JobEvent] = session.info.pop(_PENDING, [])
        if not rows or stream is None:
            return
        try:
            stream.publish([event_payload(row) for row in rows])
        except redis.RedisError:
            # The events are committed; SSE readers fill the gap from the database.
            log.warning("could not mirror %d events to Redis", len(rows), exc_info=True)

    def after_rollback(session: Session) -> None:
        session.info.pop(_PENDING, None)

    listen_outermost(factory, committed=after_commit, rolled_back=after_rollback)
