"""A Core SELECT run on the driver's own cursor, for the reads the API answers most (``GET /v1/jobs/{id}``).

SQLAlchemy's execution builds the cursor's description and the result's metadata again on every call: in a
profile of that route on PostgreSQL it cost more than the driver's own work (about 230 us a statement
against 100 us). ``DriverQuery`` compiles its statement once per dialect and converts each row with the
column types' own result processors (what SQLAlchemy would apply: UTC datetimes, JSON on SQLite), so a row
reads the same either way (``tests/app/db/test_job_reads.py``). A driver error is left to SQLAlchemy: the
statement runs once more through it, and its error handling (a lost connection invalidates the pool) is
what the caller meets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Select


@dataclass(frozen=True)
class Compiled:
    sql: str
    positions: tuple[str, ...] | None  # the parameters' order, for a positional paramstyle (SQLite's ?)
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    binders: Mapping[str, Callable[[Any], Any]]  # the parameters' types' bind processors (UTC datetimes...)
    defaults: Mapping[str, Any]  # the values of the parameters the compiler added (SQLite's OFFSET 0)

    def parameters(self, values: Mapping[str, Any]) -> Mapping[str, Any] | tuple[Any, ...]:
        if self.defaults:
            values = {**self.defaults, **values}
        if self.binders:
            values = {name: self._bound(name, value) for name, value in values.items()}
        return values if self.positions is None else tuple(values[name] for name in self.positions)

    def _bound(self, name: str, value: Any) -> Any:
        binder = self.binders.get(name)
        return value if binder is None or value is None else binder(value)

    def convert(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            name: value if process is None else process(value)
            for name, process, value in zip(self.names, self.processors, row, strict=True)
        }


class DriverQuery:
    """``query``'s rows as dicts by column name; its parameters given by name (``bindparam``s, no defaults),
    converted by their types' bind processors as SQLAlchemy would."""

    def __init__(self, query: Select[Any]) -> None:
        self.query = query
        self._compiled: dict[str, Compiled] = {}

    def all(self, connection: Connection, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        compiled = self.compiled(connection.dialect)
        values = compiled.parameters(parameters)
        events = connection.dispatch  # statement listeners (tracing, tests) see these statements too
        try:
            cursor = connection.connection.cursor()  # the pool's proxy of the driver's connection
            try:
                if events.before_cursor_execute:
                    events.before_cursor_execute(connection, cursor, compiled.sql, values, None, False)
                cursor.execute(compiled.sql, values)
                rows = cursor.fetchall()
                if events.after_cursor_execute:
                    events.after_cursor_execute(connection, cursor, compiled.sql, values, None, False)
            finally:
                cursor.close()
        except connection.dialect.loaded_dbapi.Error:
            return [dict(row) for row in connection.execute(self.query, dict(parameters)).mappings()]
        return [compiled.convert(tuple(row)) for row in rows]

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement compiled for ``dialect``, once."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self.query.compile(dialect=dialect)
            columns = self.query.selected_columns
            types = [column.type.dialect_impl(dialect) for column in columns]
            binders = {
                name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in statement.binds.items()
            }
            compiled = Compiled(
                sql=str(statement),
                positions=tuple(statement.positiontup or ()) if statement.positional else None,
                names=tuple(str(column.key) for column in columns),
                processors=tuple(type_.result_processor(dialect, None) for type_ in types),
                binders={name: binder for name, binder in binders.items() if binder is not None},
                defaults={name: bind.value for name, bind in statement.binds.items() if not bind.required},
            )
            self._compiled[dialect.name] = compiled
        return compiled
