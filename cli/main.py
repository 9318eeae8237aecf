"""``finetune``: the group every command hangs off, its global options, and the list of command groups.

This module imports only click at startup; each command imports what it needs when it runs, so
``finetune --help`` answers at once (no FastAPI, SQLAlchemy or torch). A new command group is a module in
``cli/commands/`` and one ``main.add_command`` line below.
Exit codes: ``cli.options`` (0 success, 1 failure, 2 usage, 3 unreachable, 4 not found).
"""

from __future__ import annotations

import click

from cli.commands.database import db
from cli.commands.datasets import datasets
from cli.commands.jobs import jobs
from cli.commands.keys import keys
from cli.commands.serve import serve
from cli.commands.store import store
from cli.commands.sweeps import sweeps
from cli.commands.webhooks import webhooks
from cli.commands.worker import worker
from cli.options import EXIT_CODES_HELP, GlobalOptions


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Fine-tune torchvision image classifiers: the service's command line.\n\n" + EXIT_CODES_HELP,
)
@click.option(
    "--url",
    envvar="FT_API_URL",
    show_envvar=True,
    default=None,
    help="The API to talk to (default: http://127.0.0.1:8000).",
)
@click.option(
    "--api-key", envvar="FT_API_KEY", show_envvar=True, default=None, help="An API key (finetune keys create)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the API objects as JSON on stdout, and nothing else there."
)
@click.option("--quiet", "-q", is_flag=True, help="Show no progress bar or spinner on stderr (errors still print).")
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None, as_json: bool, quiet: bool) -> None:
    options = ctx.ensure_object(GlobalOptions)
    options.url, options.api_key = url, api_key
    options.json = options.json or as_json
    options.quiet = options.quiet or quiet


# The client's commands: they talk to a running service (--url).
main.add_command(datasets)
main.add_command(jobs)
main.add_command(webhooks)
main.add_command(sweeps)
# The service's own: they run on its host.
main.add_command(db)
main.add_command(keys)
main.add_command(store)
main.add_command(worker)
main.add_command(serve)


if __name__ == "__main__":
    main()
