"""``finetune db upgrade``, and the database check every command on the service's host starts with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from app.settings import Settings


@click.group()
def db() -> None:
    """The service's database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="The migration to bring the database to.")
def db_upgrade(revision: str) -> None:
    """Apply the migrations to FT_DATABASE_URL (default: the SQLite file under FT_HOME)."""
    from app.db.migrate import redacted_url, upgrade
    from app.settings import Settings

    settings = Settings()
    upgrade(settings, revision)
    click.echo(f"database at {redacted_url(settings.sqlalchemy_url)} is at {revision}")


def ready_database() -> Settings:
    """The settings, their database ready: the embedded one migrated, a server one checked (a clear error)."""
    from app.db.migrate import DatabaseNotReady, prepare_database
    from app.settings import Settings

    settings = Settings()
    try:
        prepare_database(settings)
    except DatabaseNotReady as error:
        raise click.ClickException(str(error)) from None
    return settings
