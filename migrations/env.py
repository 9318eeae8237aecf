"""Alembic's environment: the target is the app's metadata, the URL comes from the app's settings."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Engine

from app.db import models  # noqa: F401  (registers every table on the metadata)
from app.db.base import Base
from app.db.session import engine_for
from app.settings import Settings

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _engine() -> tuple[Engine, bool]:
    """The engine the caller handed over (app.db.migrate), or one from the settings (the alembic CLI)."""
    given = config.attributes.get("engine")
    if isinstance(given, Engine):
        return given, False
    return engine_for(Settings()), True


def run_migrations_online() -> None:
    engine, owned = _engine()
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    context.configure(url=Settings().sqlalchemy_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
