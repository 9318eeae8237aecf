"""Query parameters of lists, and turning a page of rows into a list object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query

from app.schemas.common import ListPage

Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (1..100).")]
After = Annotated[
    str | None, Query(min_length=1, max_length=64, description="Start after this id (the previous page's last_id).")
]

Row = TypeVar("Row")
Page = TypeVar("Page", bound=ListPage[Any])


def list_page(page_type: type[Page], rows: Sequence[Row], has_more: bool, show: Callable[[Row], Any]) -> Page:
    data = [show(row) for row in rows]
    ids = [str(item.id) for item in data]
    return page_type(data=data, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)
