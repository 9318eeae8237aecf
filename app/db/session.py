"""Engines and sessions. One transaction per request or task: ``transaction`` commits on success and rolls
back on error; nothing deeper commits (the exceptions, and why: ``app.services.transactions``).

SQLite (the embedded mode) runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: writers queue for the lock up front instead of failing with SQLITE_BUSY when a read
transaction later tries to write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from app.dispatch.after_commit import DEFER, install_dispatch_hooks, run_committed_sends
from app.settings import Settings

SQLITE_BUSY_TIMEOUT_SECONDS = 30
PING_AFTER_IDLE_SECONDS = 5.0
READS_ONLY = "finetune_reads_only"
FACTORY = "finetune.factory"  # Session.info: the sessionmaker a session came from (session_factory)
POOL_OVERFLOW = 5  # connections past the pool for the background tasks (the sweeper) and bursts


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``, with the SQLite settings above when it is a SQLite URL."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat unused for ``PING_AFTER_IDLE_SECONDS``: what
    a server restart or a dropped link leaves dead is what sat idle meanwhile, and a busy API no longer pays
    a round trip on every request (``pool_pre_ping`` did). A connection that dies within the window fails
    its request once, and SQLAlchemy then replaces every connection older than it."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except Exception as error:
            raise DisconnectionError("a pooled connection failed its ping") from error  # the pool reconnects


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A read (``reading``) takes no write lock: in WAL mode it neither waits for writers nor blocks them.
        reads = connection.get_execution_options().get(READS_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reads else "BEGIN IMMEDIATE")


def engine_for(settings: Settings) -> Engine:
    """The process's engine: ``db_pool_size`` connections kept open (as many requests use the database at
    once: ``app.api.deps.db_slot``); the overflow serves the background tasks (the sweeper)."""
    if settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    pool: dict[str, Any] = {"pool_size": settings.db_connections, "max_overflow": POOL_OVERFLOW}
    if not settings.sqlalchemy_url.startswith("postgresql"):
        return create_db_engine(settings.sqlalchemy_url, **pool)
    return create_db_engine(settings.sqlalchemy_url, connect_args=postgres_connect_args(settings), **pool)


def postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """libpq options that bound every wait on PostgreSQL: a connection attempt, a statement, and a silent
    peer (TCP keepalives, and ``tcp_user_timeout`` for data sent but never acknowledged). Without them a
    connection to a server that vanished hangs until the kernel gives up, minutes later."""
    keepalive = settings.db_keepalive_seconds
    statement_ms = int(settings.db_statement_timeout_seconds * 1000)
    return {
        "connect_timeout": settings.db_connect_timeout_seconds,
        "keepalives": 1,
        "keepalives_idle": keepalive,
        "keepalives_interval": keepalive,
        "keepalives_count": 3,
        "tcp_user_timeout": keepalive * 4 * 1000,
        "options": f"-c statement_timeout={statement_ms}",
    }


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects readable after commit, and send queued tasks once it succeeds."""
    factory = sessionmaker(engine, expire_on_commit=False)
    factory.configure(info={FACTORY: factory})  # each session's info: what a send after its commit opens
    install_dispatch_hooks(factory)
    return factory


def factory_of(session: Session) -> sessionmaker[Session]:
    """The factory ``session`` came from (``session_factory``'s), for work after its transaction; a session
    made otherwise gets a factory of its engine."""
    found: sessionmaker[Session] | None = session.info.get(FACTORY)
    return found if found is not None else session_factory(session.get_bind().engine)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back when it raises. Tasks
    queued with ``send_after_commit`` go out after the commit, once the session has returned its
    connection to the pool (a request never holds one connection while it waits for another)."""
    with factory(info={DEFER: True}) as session, session.begin():
        yield session
    run_committed_sends(session)


def reads_engine(engine: Engine) -> Engine:
    """``engine`` for sessions that only read: on PostgreSQL each statement runs on its own (autocommit: no
    ``BEGIN`` and ``COMMIT`` round trips; under READ COMMITTED each statement of a transaction sees its own
    snapshot anyway), on SQLite a deferred ``BEGIN`` (a shared lock, not the write lock). Same pool."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{READS_ONLY: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT", **{READS_ONLY: True})


@contextmanager
def reading(factory: sessionmaker[Session], engine: Engine) -> Iterator[Session]:
    """A session for reads on ``engine`` (from ``reads_engine``): what it writes is not committed (and on
    PostgreSQL would be, statement by statement), so only code that never writes may use it."""
    with factory(bind=engine) as session:
        yield session
