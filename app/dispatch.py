"""Messages sent only after the transaction that wrote their rows has committed.

A task names a row (a job, a data set); sent before the commit, a fast worker could look for a row
that is not there yet, or for one that a rollback removed. Services call ``send_after_commit``; the
session's ``after_commit`` hook sends, and a rollback drops what was pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_PENDING = "finetune.after_commit"


def send_after_commit(session: Session, send: Callable[[], object]) -> None:
    """Run ``send`` once ``session``'s transaction has committed; never if it rolls back."""
    session.info.setdefault(_PENDING, []).append(send)


def _run_pending(session: Session) -> None:
    pending: list[Callable[[], object]] = session.info.pop(_PENDING, [])
    for send in pending:
        try:
            send()
        except Exception:
            # The rows are committed; a lost message is found again by the worker's periodic sweep
            # (app.services.dispatching.sweep: jobs whose dispatched_at stayed NULL, stale validations).
            log.exception("sending a task after commit failed")


def _drop_pending(session: Session, *_args: Any) -> None:
    session.info.pop(_PENDING, None)


def install_dispatch_hooks(factory: sessionmaker[Session]) -> None:
    event.listen(factory, "after_commit", _run_pending)
    event.listen(factory, "after_rollback", _drop_pending)
