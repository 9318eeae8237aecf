"""The app's tests run on both backends: SQLite with the serverless file broker (the embedded mode) and
PostgreSQL with Redis (production). The database is made once per backend through the migrations and
emptied between tests; each test gets its own FT_HOME (artifacts, broker folders) and Redis key prefix."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import Base
from app.db.migrate import upgrade
from app.db.session import create_db_engine, session_factory
from app.main import create_app
from app.settings import Settings


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str | None  # the broker; None: the file broker under FT_HOME


def _create_postgres_database(server_url: str) -> str:
    url = make_url(server_url)
    name = f"ft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(False)


def drop_postgres_database(server_url: str, database_url: str) -> None:
    url = make_url(server_url)
    name = make_url(database_url).database
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "finetune.db"
        found = Backend("sqlite", f"sqlite+pysqlite:///{path}", None)
        upgrade(Settings(database_url=found.database_url))
        yield found
        return
    server = request.getfixturevalue("postgres_url")
    redis_url = request.getfixturevalue("redis_url")
    database_url = _create_postgres_database(server)
    try:
        upgrade(Settings(database_url=database_url))
        yield Backend("postgresql", database_url, redis_url)
    finally:
        drop_postgres_database(server, database_url)


@pytest.fixture(scope="session")
def backend_engine(backend: Backend) -> Iterator[Engine]:
    engine = create_db_engine(backend.database_url)
    yield engine
    engine.dispose()


def empty_database(engine: Engine) -> None:
    """Every row of the service's tables gone, children first. DELETE, not TRUNCATE, on PostgreSQL too: on
    tables of a few rows TRUNCATE costs 0.05 to 0.25 s (new files for each table and its indexes, more on a
    busy disk) where DELETE costs 3 to 5 ms, and it runs before each of some 400 tests."""
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    # The previous test's app may still be finishing a transaction of its own (a dispatch pass after a commit)
    # whose locks cross ours: PostgreSQL then ends one of the two as a deadlock. Seen once in a full run (with
    # TRUNCATE's table locks); the wipe is simply tried again.
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(text(f"DELETE FROM {table}"))
            return
        except DBAPIError as error:
            if not isinstance(error.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                raise
            time.sleep(0.2)


@pytest.fixture
def settings(backend: Backend, backend_engine: Engine, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test, on an empty database."""
    empty_database(backend_engine)
    prefix = f"fttest-{uuid.uuid4().hex[:10]}:"
    yield Settings(
        home=tmp_path / "home",
        database_url=backend.database_url,
        broker_url=backend.redis_url,
        redis_url=backend.redis_url,  # production: live events go through a Redis stream too
        broker_key_prefix=prefix if backend.redis_url else "",
        auth_enabled=False,
    )
    if backend.redis_url:
        import redis

        client = redis.Redis.from_url(backend.redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
def factory(backend_engine: Engine) -> sessionmaker[Session]:
    return session_factory(backend_engine)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.queue.close()
    application.state.engine.dispose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://finetune.test") as http:
        yield http
