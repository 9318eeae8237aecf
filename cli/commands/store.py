"""``finetune store create-bucket``: the artifact store."""

from __future__ import annotations

import click


@click.group()
def store() -> None:
    """The artifact store (FT_STORE_URL)."""


@store.command("create-bucket")
@click.option("--wait", default=60.0, show_default=True, help="Seconds to wait for the store to answer.")
def store_create_bucket(wait: float) -> None:
    """Create the bucket FT_STORE_URL names (s3://bucket/prefix), waiting for the store to come up;
    nothing to do when it exists. A file:// store gets its folder."""
    from app.settings import Settings
    from app.stores import create_bucket

    settings = Settings()
    try:
        created = create_bucket(settings, wait_seconds=wait)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{settings.store_location}: {'created' if created else 'already there'}")
