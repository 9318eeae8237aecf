"""``finetune webhooks create|list|deliveries|delete``."""

from __future__ import annotations

import click

from app.webhooks.events import JOB_EVENTS
from cli.options import GlobalOptions, json_option, pass_options

EVENTS = JOB_EVENTS  # the API's own list, so the choices never fall behind it


@click.group()
def webhooks() -> None:
    """Endpoints that receive this project's job events, signed per Standard Webhooks."""


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(EVENTS),
    help="An event to send (repeatable). Default: the terminal ones (succeeded, failed, cancelled).",
)
@click.option("--description", default="", help="What the endpoint is for.")
@json_option
@pass_options
def create(options: GlobalOptions, url: str, events: tuple[str, ...], description: str) -> None:
    """Register URL; prints its signing secret, shown this once."""
    chosen = list(events) or ["job.succeeded", "job.failed", "job.cancelled"]
    with options.client() as client:
        endpoint = client.webhooks.create(url, chosen, description=description)
    options.show(endpoint, lambda made: f"{made.id}  {made.url}  {', '.join(made.events)}\nsecret: {made.secret}")
    if not options.json:  # a person's reminder; a script stores the secret it just read
        click.echo("store the secret now: it cannot be shown again (rotate it to get a new one)", err=True)


@webhooks.command("list")
@json_option
@pass_options
def list_webhooks(options: GlobalOptions) -> None:
    """The project's webhook endpoints, newest first."""
    from cli.output import webhooks_table

    with options.client() as client:
        rows = list(client.webhooks.list_all())
    options.show(rows, webhooks_table)


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
@pass_options
def deliveries(options: GlobalOptions, webhook_id: str, status: str | None, limit: int) -> None:
    """An endpoint's deliveries, newest first: attempts, the last status code and error, the next retry."""
    from cli.output import deliveries_table

    with options.client() as client:
        page = client.webhooks.deliveries(webhook_id, status=status, limit=limit)
    options.show(page.data, deliveries_table)


@webhooks.command("delete")
@click.argument("webhook_id")
@json_option
@pass_options
def delete(options: GlobalOptions, webhook_id: str) -> None:
    """Delete an endpoint and its deliveries (pending retries are dropped)."""
    with options.client() as client:
        deleted = client.webhooks.delete(webhook_id)
    options.show(deleted, lambda gone: f"deleted {gone.id}")
