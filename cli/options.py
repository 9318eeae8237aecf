"""What every client command shares: the global options (``--url``, ``--api-key``, ``--json``, ``--quiet``),
the client they open, how a result is shown (``GlobalOptions.show``), and the exit codes the client's errors
turn into."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import RenderableType

    from app.client import ApiError, Client, ClientError

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed or was cancelled (--wait, logs -f), or a request failed
EXIT_USAGE = 2  # click's own code for bad usage; also an invalid request (422) or input
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the job goes on

EXIT_CODES_HELP = """\b
Exit codes:
  0    success (with --wait or logs -f: the job succeeded)
  1    the job failed or was cancelled (--wait, logs -f), or a request failed
  2    bad usage or invalid input (the API's 422 included)
  3    cannot reach the server
  4    not found
  130  interrupted while following (the job goes on)"""

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass
class GlobalOptions:
    """The global options, as ``main`` parsed them (``ctx.obj``)."""

    url: str | None = None
    api_key: str | None = None
    json: bool = False
    quiet: bool = False  # no progress bars or spinners on stderr (errors still go there)

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A client of the server, closed afterwards; a client error exits with its code (``fail_with``)."""
        from app.client import Client, ClientError, Retry

        retry = Retry(attempts=2, backoff=0.25)  # a person waits: fail fast on a wrong --url
        try:
            with Client(self.url, self.api_key, retry=retry) as client:
                yield client
        except ClientError as error:
            fail_with(error, as_json=self.json)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED, as_json=self.json)

    @property
    def hide_progress(self) -> bool:
        """No progress bar or spinner on stderr: ``--quiet``, or ``--json`` (a script reads the output)."""
        return self.quiet or self.json

    def show(self, value: T, view: Callable[[T], RenderableType | None]) -> None:
        """A command's result on stdout: the API object (or list) as JSON with ``--json``; else, for a person,
        what ``view(value)`` makes of it (``cli.output``): text as it is, a table through rich, None nothing
        (an error about to be raised says it all). Every client command ends here."""
        if self.json:
            self.emit(value)
            return
        shown = view(value)
        if isinstance(shown, str):
            click.echo(shown)
        elif shown is not None:
            from cli.output import stdout_console

            stdout_console().print(shown)

    def emit(self, value: Any) -> None:
        """An API object (or a list of them) as JSON on stdout: ``--json`` output."""
        click.echo(json.dumps(to_jsonable(value), indent=2))


def to_jsonable(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value


pass_options = click.make_pass_decorator(GlobalOptions, ensure=True)


def _global_flag(attribute: str, *names: str, help: str) -> Callable[[F], F]:
    """A flag of ``finetune`` itself that a command takes too (either place works): it sets ``attribute`` of
    the ``GlobalOptions``."""

    def turn_on(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            setattr(ctx.ensure_object(GlobalOptions), attribute, True)

    return click.option(*names, is_flag=True, expose_value=False, callback=turn_on, help=help)


# --quiet/-q: no progress shown, errors still.
quiet_option = _global_flag(
    "quiet", "--quiet", "-q", help="Show no progress bar or spinner on stderr (errors still print there)."
)
# --json: the API objects, as JSON, and nothing else on stdout (GlobalOptions.show).
json_option = _global_flag(
    "json", "--json", "as_json", help="Print the API objects as JSON on stdout, and nothing else there."
)


def fail(message: str, exit_code: int, *, as_json: bool, envelope: dict[str, Any] | None = None) -> NoReturn:
    """Say why on stderr (as the API's error envelope with --json) and exit with ``exit_code``."""
    if as_json:
        click.echo(json.dumps(envelope or {"error": {"code": "client_error", "message": message}}), err=True)
    else:
        click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


def fail_with(error: ClientError, *, as_json: bool) -> NoReturn:
    """Exit for a client error, with the code scripts can rely on."""
    from app.client import ApiError, InvalidRequest, NotFound
    from app.client import ConnectionError as Unreachable

    if isinstance(error, Unreachable):
        envelope = {"error": {"code": "unreachable", "message": str(error)}}
        fail(f"{error} (set --url or FT_API_URL)", EXIT_UNREACHABLE, as_json=as_json, envelope=envelope)
    if not isinstance(error, ApiError):
        fail(str(error), EXIT_FAILED, as_json=as_json)
    code = EXIT_FAILED
    if isinstance(error, NotFound):
        code = EXIT_NOT_FOUND
    elif isinstance(error, InvalidRequest):
        code = EXIT_USAGE
    fail(describe_api_error(error), code, as_json=as_json, envelope=error.to_envelope())


def describe_api_error(error: ApiError) -> str:
    lines = [f"{error.code}: {error.message}"]
    if len(error.details) > 1:
        lines += [f"  {detail.param or '(request)'}: {detail.message}" for detail in error.details]
    if error.param == "spec.data.path":
        lines.append("  over the API a spec names an uploaded data set: pass --dataset ds_...")
    if error.status >= 500 and error.request_id:
        lines.append(f"  request id {error.request_id}: quote it when reporting this")
    return "\n".join(lines)
