"""``finetune webhooks create|list|deliveries|delete``."""

from __future__ import annotations

import click

from cli.options import GlobalOptions, json_option, pass_options

EVENTS = ("job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled")


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
    if options.json:
        options.emit(endpoint)
        return
    click.echo(f"{endpoint.id}  {endpoint.url}  {', '.join(endpoint.events)}")
    click.echo(f"secret: {endpoint.secret}")
    click.echo("store the secret now: it cannot be shown again (rotate it to get a new one)", err=True)


@webhooks.command("list")
@json_option
@pass_options
def list_webhooks(options: GlobalOptions) -> None:
    """The project's webhook endpoints, newest first."""
    from rich.table import Table

    from cli.output import stdout_console

    with options.client() as client:
        rows = list(client.webhooks.list_all())
    if options.json:
        options.emit(rows)
        return
    table = Table("id", "url", "events", "enabled", "description")
    for row in rows:
        table.add_row(row.id, row.url, ", ".join(row.events), "yes" if row.enabled else "no", row.description)
    stdout_console().print(table)


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
@pass_options
def deliveries(options: GlobalOptions, webhook_id: str, status: str | None, limit: int) -> None:
    """An endpoint's deliveries, newest first: attempts, the last status code and error, the next retry."""
    from rich.table import Table

    from cli.output import stdout_console

    with options.client() as client:
        page = client.webhooks.deliveries(webhook_id, status=status, limit=limit)
    if options.json:
        options.emit(page.data)
        return
    table = Table("id (webhook-id)", "event", "job", "status", "attempts", "last", "next retry")
    for row in page.data:
        last = row.attempts[-1] if row.attempts else None
        shown = "" if last is None else (last.error or str(last.status_code)) + f" ({last.latency_ms} ms)"
        retry = "" if row.next_attempt_at is None or row.status != "pending" else _ago(row.next_attempt_at)
        table.add_row(row.id, row.event_type, row.job_id or "", row.status, str(len(row.attempts)), shown, retry)
    stdout_console().print(table)


def _ago(unix: int) -> str:
    import time

    seconds = round(unix - time.time())
    return f"in {seconds} s" if seconds > 0 else "due"


@webhooks.command("delete")
@click.argument("webhook_id")
@json_option
@pass_options
def delete(options: GlobalOptions, webhook_id: str) -> None:
    """Delete an endpoint and its deliveries (pending retries are dropped)."""
    with options.client() as client:
        deleted = client.webhooks.delete(webhook_id)
    if options.json:
        options.emit(deleted)
    else:
        click.echo(f"deleted {deleted.id}")
