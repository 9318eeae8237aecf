"""The engine's pool on a real PostgreSQL: a pooled connection that died while it sat idle (the server
restarted, a link dropped) is replaced at checkout, and the request that takes it never sees the error."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db import session as db_session
from app.db.session import create_db_engine


@pytest.fixture
def postgres_engine(backend):
    if backend.name != "postgresql":
        pytest.skip("SQLite has no server connection to lose")
    engine = create_db_engine(backend.database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def backend_pid(engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(text("SELECT pg_backend_pid()")))


def kill(backend, pid: int) -> None:
    killer = create_db_engine(backend.database_url)
    with killer.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    killer.dispose()


def test_a_connection_killed_while_idle_is_replaced_at_checkout(postgres_engine, backend, monkeypatch):
    first = backend_pid(postgres_engine)
    assert backend_pid(postgres_engine) == first  # pooled: the same server process
    kill(backend, first)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has been idle "long enough"
    assert backend_pid(postgres_engine) != first  # pinged, found dead, replaced: no error


def test_a_connection_that_died_within_the_idle_window_fails_once_then_is_replaced(postgres_engine, backend):
    """The trade against pinging at every checkout: no ping for a connection used moments ago, so its death
    costs one failed request; SQLAlchemy sees the disconnect and replaces it for the next."""
    first = backend_pid(postgres_engine)
    kill(backend, first)
    with pytest.raises(DBAPIError) as failed:
        backend_pid(postgres_engine)
    assert failed.value.connection_invalidated
    assert backend_pid(postgres_engine) != first
