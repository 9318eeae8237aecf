"""Messages sent only after the transaction that wrote their rows has committed.

A task names a row (a job, a data set); sent before the commit, a fast worker could look for a row
that is not there yet, or for one that a rollback removed. Services call ``send_after_commit``; the
session's ``after_commit`` hook sends, and a rollback drops what was pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_PENDING = "finetune.after_commit"
DEFER = "finetune.defer_sends"  # set by ``transaction``: sends wait until the session has let go of its connection
_COMMITTED = "finetune.committed_sends"


def send_after_commit(session: Session, send: Callable[[], object]) -> None:
    """Run ``send`` once ``session``'s transaction has committed; never if it rolls back."""
    session.info.setdefault(_PENDING, []).append(send)


def _run_pending(session: Session) -> None:
    pending: list[Callable[[], object]] = session.info.pop(_PENDING, [])
    if session.info.get(DEFER):
        # The session still holds its connection here; a send that writes (dispatched_at) would take a
        # second one, and a crowd of requests doing that at once exhausts the pool while each holds one.
        session.info.setdefault(_COMMITTED, []).extend(pending)
        return
    run_sends(pending)


def run_committed_sends(session: Session) -> None:
    """The sends of a deferred session's committed transaction, once the session is closed."""
    run_sends(session.info.pop(_COMMITTED, []))


def run_sends(pending: list[Callable[[], object]]) -> None:
    for send in pending:
        try:
            send()
        except Exception:
            # The rows are committed; a lost message is found again by the worker's periodic sweep
            # (app.dispatch.sweep.sweep: jobs whose dispatched_at stayed NULL, stale validations).
            log.exception("sending a task after commit failed")


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def install_dispatch_hooks(factory: sessionmaker[Session]) -> None:
    listen_outermost(factory, committed=_run_pending, rolled_back=_drop_pending)


def listen_outermost(
    factory: sessionmaker[Session], *, committed: Callable[[Session], None], rolled_back: Callable[[Session], None]
) -> None:
    """``committed(session)`` once a session's outermost transaction has committed, ``rolled_back(session)``
    once it has rolled back. SQLAlchemy fires its ``after_commit`` and ``after_rollback`` for a savepoint too
    (``begin_nested``: its release, its rollback), when nothing is committed yet and the outer transaction's
    work is not lost: a send there would go out before its rows exist (and on SQLite a hook that writes would
    wait for the write lock its own session holds), a drop there would lose the outer transaction's sends.
    So a savepoint must not register work for after the commit: what it registered stays on a rollback (the
    savepoints here wrap one insert that may conflict, and register nothing)."""

    def after_commit(session: Session) -> None:
        if not session.in_nested_transaction():
            committed(session)

    def after_rollback(session: Session) -> None:
        if not session.in_nested_transaction():
            rolled_back(session)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)
