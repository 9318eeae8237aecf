"""``finetune store create-bucket`` and ``finetune store gc``: the artifact store."""

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


@store.command("gc")
@click.option(
    "--older-than-hours",
    type=click.FloatRange(min=0),
    default=None,
    help="Undo the writes left unfinished this long (0: every one now; default: FT_ABANDONED_WRITE_HOURS).",
)
def store_gc(older_than_hours: float | None) -> None:
    """Undo the writes to the store that processes killed mid-write left unfinished: S3 multipart uploads
    under the store's prefix still open (invisible, yet stored and billed) are aborted, a folder's temporary
    files removed. The API does it once an hour by itself; this does it now. Prints the keys concerned.
    With 0, uploads in progress now are cut off too."""
    from datetime import timedelta

    from app.settings import Settings
    from app.stores import store_for

    settings = Settings()
    hours = settings.abandoned_write_hours if older_than_hours is None else older_than_hours
    try:
        undone = store_for(settings).abort_abandoned_writes(timedelta(hours=hours))
    except Exception as error:  # a folder's OSError, boto3's errors (no bucket, refused, unreachable)
        raise click.ClickException(f"{settings.store_location}: {error}") from None
    for key in undone:
        click.echo(key)
    click.echo(f"{settings.store_location}: {len(undone)} write(s) unfinished for over {hours:g}h undone", err=True)
