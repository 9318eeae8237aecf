"""The migrations are the schema: they apply to an empty database and roll back, and the models match
them exactly (an autogenerate comparison finds nothing to do)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import models  # noqa: F401
from app.db.base import Base
from app.db.migrate import downgrade, upgrade
from app.db.session import create_db_engine
from app.settings import Settings
from tests.app.conftest import _create_postgres_database, drop_postgres_database


def _diff(url: str) -> list[object]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    settings = Settings(database_url=url)
    upgrade(settings)
    assert _tables(url) == set(Base.metadata.tables)
    assert _diff(url) == []
    downgrade(settings, "base")
    assert _tables(url) == set()
    upgrade(settings)
    assert _tables(url) == set(Base.metadata.tables)


def test_postgresql_upgrade_downgrade_and_models_match(postgres_url):
    url = _create_postgres_database(postgres_url)
    try:
        _round_trip(url)
    finally:
        drop_postgres_database(postgres_url, url)


def test_sqlite_upgrade_downgrade_and_models_match(tmp_path):
    _round_trip(f"sqlite+pysqlite:///{tmp_path / 'fresh.db'}")


def test_the_embedded_default_is_a_sqlite_file_under_home(tmp_path):
    settings = Settings(home=tmp_path / "home")
    upgrade(settings)
    assert (tmp_path / "home" / "finetune.db").is_file()
    assert _tables(settings.sqlalchemy_url) == set(Base.metadata.tables)


@pytest.mark.parametrize("table", ["jobs", "datasets", "job_events"])
def test_list_queries_have_their_indexes(backend, table):
    engine = create_db_engine(backend.database_url)
    try:
        indexes = {tuple(index["column_names"]) for index in inspect(engine).get_indexes(table)}
        uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints(table)}
    finally:
        engine.dispose()
    wanted = {
        "jobs": {
            ("project_id", "id"),
            ("project_id", "status", "id"),
            ("project_id", "dataset_id", "id"),
            ("status", "lease_expires_at"),
        },
        "datasets": {("project_id", "id"), ("project_id", "status", "id")},
        "job_events": {("job_id", "type", "seq")},
    }[table]
    assert wanted <= indexes | uniques
    if table == "job_events":
        assert ("job_id", "seq") in uniques | indexes
