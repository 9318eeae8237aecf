"""Alembic, from code: ``finetune db upgrade`` and the embedded mode's start apply the migrations here.

The app never calls ``create_all``: every schema change is a migration under ``migrations/``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

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
