"""``finetune``: the command line. This module imports only click at startup; each command imports what
it needs when it runs, so ``finetune --help`` answers at once (no FastAPI, SQLAlchemy or torch).

The later issues add ``serve``, ``worker``, ``datasets`` and ``jobs`` to the ``main`` group.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fine-tune torchvision image classifiers: the service's command line."""


@main.group()
def db() -> None:
    """The service's database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="The migration to bring the database to.")
def db_upgrade(revision: str) -> None:
    """Apply the migrations to FT_DATABASE_URL (default: the SQLite file under FT_HOME)."""
    from app.db.migrate import upgrade
    from app.settings import Settings

    settings = Settings()
    upgrade(settings, revision)
    click.echo(f"database at {_redacted(settings.sqlalchemy_url)} is at {revision}")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--project", required=True, help="The project the key acts for (created if missing).")
@click.option("--name", default=None, help="A label for the key, to tell keys apart.")
def keys_create(project: str, name: str | None) -> None:
    """Create an API key and print it. It is shown once: only its hash is stored."""
    from app.db.session import engine_for, session_factory, transaction
    from app.services.projects import create_api_key
    from app.settings import Settings

    engine = engine_for(Settings())
    try:
        with transaction(session_factory(engine)) as session:
            row, secret = create_api_key(session, project, name)
            key_id = row.id
    finally:
        engine.dispose()
    click.echo(secret)
    click.echo(f"key {key_id} for project {project!r}: store it now, it cannot be shown again", err=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
