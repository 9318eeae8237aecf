"""``finetune keys create|list|revoke|rotate``: API keys, straight in the service's database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from cli.commands.database import ready_database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@click.group()
def keys() -> None:
    """API keys."""


@contextmanager
def _key_session() -> Iterator[Session]:
    """One transaction on the service's database, for the key commands."""
    from app.db.session import engine_for, session_factory, transaction

    engine = engine_for(ready_database())
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _days(value: float | None) -> timedelta | None:
    return timedelta(days=value) if value is not None else None


EXPIRES = click.option(
    "--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None, help="The key stops working then."
)


@keys.command("create")
@click.option("--project", required=True, help="The project the key acts for (created if missing).")
@click.option("--name", default=None, help="A label for the key, to tell keys apart.")
@EXPIRES
def keys_create(project: str, name: str | None, expires_in_days: float | None) -> None:
    """Create an API key and print it. It is shown once: only its hash is stored."""
    from app.services.projects import create_api_key

    with _key_session() as session:
        row, secret = create_api_key(session, project, name, _days(expires_in_days))
        key_id = row.id
    click.echo(secret)
    click.echo(f"key {key_id} for project {project!r}: store it now, it cannot be shown again", err=True)


@keys.command("list")
@click.option("--project", default=None, help="Only this project's keys.")
def keys_list(project: str | None) -> None:
    """Every key: id, project, name, prefix, created, expires, state (never the key itself)."""
    from app.clock import utcnow
    from app.errors import ServiceError
    from app.services.projects import list_api_keys

    with _key_session() as session:
        try:
            rows = list_api_keys(session, project)
        except ServiceError as error:
            raise click.ClickException(error.message) from None
        now = utcnow()
        click.echo("ID\tPROJECT\tNAME\tPREFIX\tCREATED\tEXPIRES\tSTATE")
        for row in rows:
            state = "revoked" if row.revoked_at else "expired" if row.expires_at and row.expires_at <= now else "active"
            expires = row.expires_at.isoformat(timespec="seconds") if row.expires_at else "-"
            created = row.created_at.isoformat(timespec="seconds")
            click.echo(
                f"{row.id}\t{row.project.name}\t{row.name or '-'}\t{row.key_prefix}\t{created}\t{expires}\t{state}"
            )


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke KEY (its id, or its prefix as `keys list` shows it): refused within FT_AUTH_CACHE_SECONDS (5 s)."""
    from app.errors import ServiceError
    from app.services.projects import revoke_api_key

    with _key_session() as session:
        try:
            row = revoke_api_key(session, key)
        except ServiceError as error:
            raise click.ClickException(error.message) from None
        click.echo(f"key {row.id} ({row.key_prefix}...) of project {row.project.name!r} is revoked", err=True)


@keys.command("rotate")
@click.argument("key")
@click.option(
    "--grace-minutes",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="The old key keeps working this long (time to deploy the new one); 0: revoked now.",
)
@EXPIRES
def keys_rotate(key: str, grace_minutes: float, expires_in_days: float | None) -> None:
    """Replace KEY with a new key for the same project and name; print the new key (shown once)."""
    from app.errors import ServiceError
    from app.services.projects import rotate_api_key

    with _key_session() as session:
        try:
            old, new, secret = rotate_api_key(
                session, key, grace=timedelta(minutes=grace_minutes), expires_in=_days(expires_in_days)
            )
        except ServiceError as error:
            raise click.ClickException(error.message) from None
        old_id, new_id = old.id, new.id
    click.echo(secret)
    ends = f"stops working in {grace_minutes:g} minutes" if grace_minutes else "is revoked"
    click.echo(f"key {new_id} replaces {old_id}, which {ends}: store the new key now", err=True)
