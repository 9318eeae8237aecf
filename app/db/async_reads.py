"""The polled reads on the event loop itself: a small asyncio pool of psycopg connections (psycopg_pool) beside
the engine's, for PostgreSQL only.

Every other database call of the API crosses to a thread of the pool and back, and that hop costs about as
much CPU as the read itself: measured in one process on the ASGI app alone (2026-12-02, 2 cores), a bare
FastAPI route took 191 us a request with its hop to a thread and 46 us without; ``GET /v1/jobs/{id}`` 506 us,
of which about 150 us the hop. Here the read is awaited on the loop. The statement is the same compiled
``DriverQuery`` (its rows converted by the same column types), so what a request reads does not depend on
the path it took.

The pool's connections are in autocommit (one statement each, as ``app.db.session.reads_engine``'s) and take
the engine's libpq options (timeouts, keepalives). A request that cannot read here (no connection within
``WAIT_SECONDS``, a connection lost while idle, any driver error) reads through the engine instead, so
an outage fails such a request the way it fails every other: one path for errors and recovery. A broken
connection is discarded when it returns, and the pool connects again in the background."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Engine

from app.db.driver_reads import DriverQuery
from app.db.session import postgres_connect_args
from app.settings import Settings

WAIT_SECONDS = 0.5  # for a connection of this pool; past it the request reads through the engine
APPLICATION_NAME = "finetune-api-reads"  # what pg_stat_activity shows for this pool's connections
log = logging.getLogger(__name__)


class ReadUnavailable(Exception):
    """This pool could not answer: read through the engine."""


class AsyncReads:
    def __init__(self, engine: Engine, settings: Settings, unavailable: Callable[[str], None] = lambda _: None) -> None:
        self.dialect = engine.dialect
        self.unavailable = unavailable  # told "timeout" or "error" for each read this pool could not serve
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.pool = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME, **postgres_connect_args(settings)},
            min_size=1,
            max_size=settings.db_read_pool_size,
            open=False,
            name="finetune-reads",
        )

    @classmethod
    def for_engine(
        cls, engine: Engine, settings: Settings, unavailable: Callable[[str], None] = lambda _: None
    ) -> AsyncReads | None:
        """A pool for a PostgreSQL engine when ``db_read_pool_size`` allows one; None otherwise."""
        if engine.dialect.name != "postgresql" or settings.db_read_pool_size == 0:
            return None
        return cls(engine, settings, unavailable)

    async def open(self) -> None:
        await self.pool.open(wait=False)  # connects in the background: a server not up yet delays nothing

    async def close(self) -> None:
        await self.pool.close()

    async def all(self, query: DriverQuery, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``query``'s rows, or ReadUnavailable."""
        compiled = query.compiled(self.dialect)
        try:
            async with self.pool.connection(timeout=WAIT_SECONDS) as connection:
                cursor = await connection.execute(compiled.sql, compiled.parameters(parameters))
                rows = await cursor.fetchall()
        except (PoolTimeout, psycopg.Error) as error:
            log.debug("a read on the event loop's pool failed: %s", error)
            self.unavailable("timeout" if isinstance(error, PoolTimeout) else "error")
            raise ReadUnavailable from error
        return [compiled.convert(tuple(row)) for row in rows]
