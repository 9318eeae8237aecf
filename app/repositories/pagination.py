"""Keyset pagination over time-sortable ids: ``after`` is the last id of the previous page."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

Row = TypeVar("Row")


def keyset_page(
    session: Session,
    query: Select[Row],
    key: InstrumentedAttribute[Any],
    *,
    after: Any | None,
    limit: int,
    newest_first: bool = True,
) -> tuple[list[Row], bool]:
    """Up to ``limit`` rows past ``after`` in ``key`` order, and whether more follow."""
    if after is not None:
        query = query.where(key < after if newest_first else key > after)
    query = query.order_by(key.desc() if newest_first else key.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit
