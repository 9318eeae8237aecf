"""Work a transaction registers for after its commit (task sends, the live stream's mirror, webhook deliveries)
runs once the outermost transaction commits. SQLAlchemy fires ``after_commit`` and ``after_rollback`` for a
savepoint too: its release is not a commit (a send there went out before its rows existed; on SQLite the outbox's
hook then waited 30 s for the write lock its own session held), and its rollback loses nothing of the outer
transaction's."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from app.db.session import transaction
from app.dispatch.after_commit import listen_outermost, send_after_commit


def test_the_hooks_see_the_outermost_transaction_only(backend_engine):
    factory = sessionmaker(backend_engine)
    seen: list[str] = []
    listen_outermost(
        factory, committed=lambda _: seen.append("committed"), rolled_back=lambda _: seen.append("rolled back")
    )
    with factory() as session, session.begin():
        with session.begin_nested():
            session.execute(text("SELECT 1"))
        session.begin_nested().rollback()
        with pytest.raises(ValueError), session.begin_nested():
            raise ValueError("a conflicting insert, say")
        assert seen == []
    assert seen == ["committed"]
    with factory() as session:
        session.begin()
        session.begin_nested().commit()
        session.rollback()
    assert seen == ["committed", "rolled back"]


def test_a_send_waits_for_the_outer_commit_and_survives_a_savepoints_rollback(factory):
    sent: list[str] = []
    with transaction(factory) as session:
        send_after_commit(session, lambda: sent.append("job"))
        session.begin_nested().rollback()
        with session.begin_nested():
            session.execute(text("SELECT 1"))
        assert sent == []
    assert sent == ["job"]

    with pytest.raises(RuntimeError), transaction(factory) as session:
        send_after_commit(session, lambda: sent.append("rolled back"))
        session.begin_nested().commit()
        raise RuntimeError("the route failed")
    assert sent == ["job"]
