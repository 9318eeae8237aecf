"""Alembic, from code: ``finetune db upgrade`` and the embedded mode's start apply the migrations here.

The app never calls ``create_all``: every schema change is a migration under ``migrations/``. The embedded
SQLite file migrates itself on first use (``prepare_database``); a server database (production) is migrated
only by ``finetune db upgrade``, and a command run before it says so instead of failing on a missing table.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

import migrations
from app.db.session import engine_for
from app.settings import Settings

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent  # a package: installed with the project


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for this project's migrations, on ``engine`` when given (else the settings' URL)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the settings' database up to ``revision``."""
    engine = engine_for(settings)
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        engine.dispose()


def downgrade(settings: Settings, revision: str) -> None:
    engine = engine_for(settings)
    try:
        command.downgrade(alembic_config(engine), revision)
    finally:
        engine.dispose()


class DatabaseNotReady(Exception):
    """The database cannot serve yet: unreachable, or not at the migrations' head. The message says what to do."""


def prepare_database(settings: Settings) -> None:
    """Make the settings' database ready for the service, or say what to run.

    Embedded (the SQLite file under FT_HOME): apply the migrations, as ``serve`` does, so that any command
    works on a fresh home. A server database: check that it is at head; migrating it stays an explicit step.
    """
    if settings.is_embedded:
        upgrade(settings)
        return
    where = redacted_url(settings.sqlalchemy_url)
    engine = engine_for(settings)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except DBAPIError as error:
        cause = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        raise DatabaseNotReady(f"cannot reach the database at {where}: {cause}") from None
    finally:
        engine.dispose()
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    if current != heads:
        at = ", ".join(sorted(current)) or "none (no tables yet)"
        raise DatabaseNotReady(
            f"the database at {where} is at migration {at}, not {', '.join(sorted(heads))}: "
            "run `finetune db upgrade` (with the same FT_DATABASE_URL) first"
        )


def redacted_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)
