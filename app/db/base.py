"""The declarative base, its naming convention (stable constraint names for migrations) and column types."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Dialect, MetaData, insert, inspect
from sqlalchemy.orm import DeclarativeBase, Session, make_transient_to_detached
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend: ``timestamptz`` on PostgreSQL; on SQLite, which has no
    time zones, a naive UTC value that compares correctly as text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


def insert_all(session: Session, rows: Sequence[Base]) -> None:
    """New objects of one class inserted in one statement, from the column values they were given (the
    columns' defaults fill the rest): SQLAlchemy's ORM bulk insert, without the unit of work's bookkeeping,
    which cost several times the statements for a new job's rows. The objects stay out of the session, and
    their relationships are not followed: insert each class's rows yourself, parents first."""
    if not rows:
        return
    model = type(rows[0])
    keys = [attribute.key for attribute in inspect(model).column_attrs]
    session.execute(insert(model), [{key: row.__dict__[key] for key in keys if key in row.__dict__} for row in rows])


def attach(session: Session, rows: Sequence[Base]) -> None:
    """Rows ``insert_all`` wrote, into ``session`` as if it had loaded them: a later change to one is an UPDATE.
    Every row an object refers to must be among them (a job's metadata), or the flush would insert it again."""
    for row in rows:
        make_transient_to_detached(row)
    session.add_all(rows)
