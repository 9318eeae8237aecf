"""``finetune``: the command line. This module imports only click at startup; each command imports what
it needs when it runs, so ``finetune --help`` answers at once (no FastAPI, SQLAlchemy or torch).

The service's own commands live here (``serve``, ``worker``, ``db``, ``keys``, ``store``); the commands that talk
to a running service through ``app.client`` (``datasets``, ``jobs``) live in ``app.commands``.
Exit codes: ``app.commands.options`` (0 success, 1 failure, 2 usage, 3 unreachable, 4 not found).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from app.commands.datasets import datasets
from app.commands.jobs import jobs
from app.commands.options import EXIT_CODES_HELP, GlobalOptions
from app.commands.sweeps import sweeps
from app.commands.webhooks import webhooks

if TYPE_CHECKING:
    import threading
    from pathlib import Path

    from sqlalchemy.orm import Session

    from app.serving import ServeAddress
    from app.settings import Settings


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


main.add_command(datasets)
main.add_command(jobs)
main.add_command(webhooks)
main.add_command(sweeps)


@main.group()
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


def _ready_database() -> Settings:
    """The settings, their database ready: the embedded one migrated, a server one checked (a clear error)."""
    from app.db.migrate import DatabaseNotReady, prepare_database
    from app.settings import Settings

    settings = Settings()
    try:
        prepare_database(settings)
    except DatabaseNotReady as error:
        raise click.ClickException(str(error)) from None
    return settings


@main.group()
def keys() -> None:
    """API keys."""


@contextmanager
def _key_session() -> Iterator[Session]:
    """One transaction on the service's database, for the key commands."""
    from app.db.session import engine_for, session_factory, transaction

    engine = engine_for(_ready_database())
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
    """Revoke KEY (its id, or its prefix as `keys list` shows it) at once."""
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


@main.group()
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


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _worker_argv(queues: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "worker", "--queues", queues, "--loglevel", loglevel]


@main.command()
@click.option("--queues", default="gpu,cpu", show_default=True, help="Queues to take tasks from: gpu (training), cpu.")
@click.option(
    "--gpus",
    default=None,
    help="'all' or a list such as 0,1: one worker process per GPU, each with its own CUDA_VISIBLE_DEVICES. "
    "Default: a single process on whatever device there is (the CPU without a GPU).",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", default=None, help="The worker's node name (default: <queues>@<host>).")
def worker(queues: str, gpus: str | None, loglevel: str, name: str | None) -> None:
    """Run a Celery worker: trains jobs (gpu queue) and validates data sets (cpu queue)."""
    from app.observability.logs import configure_logging
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.logs_as, loglevel)
    if gpus is not None:
        _worker_per_gpu(queues, gpus, loglevel)
        return
    from celery import signals  # type: ignore[import-untyped]

    from worker.celery_app import create_celery

    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    argv = ["worker", "--queues", ",".join(queue_list), "--pool", "prefork", "--concurrency", "1"]
    argv += ["--loglevel", loglevel, "--hostname", name or f"{'-'.join(queue_list)}@%h"]
    if "gpu" in queue_list:
        argv += ["--max-tasks-per-child", "1"]  # a fresh process per job: all GPU memory back after each
    signals.setup_logging.connect(lambda **_: None, weak=False)  # configured above: Celery leaves logging alone
    quiet = ["--quiet"] if settings.logs_as == "json" else []  # no start-up banner among the JSON lines
    create_celery(settings, warm_training="gpu" in queue_list).worker_main([*quiet, *argv])


def _visible_gpus(gpus: str) -> list[str]:
    """GPU indexes without touching CUDA in this (forking) process: nvidia-smi, or the list given."""
    if gpus != "all":
        return [g.strip() for g in gpus.split(",") if g.strip()]
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise click.ClickException("--gpus all: nvidia-smi found no GPU; run without --gpus to use the CPU") from None
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def _worker_per_gpu(queues: str, gpus: str, loglevel: str) -> None:
    import signal
    import threading

    from app.supervisor import Child, Supervisor

    children = [
        Child(
            name=f"worker-gpu{gpu}",
            argv=[*_worker_argv(queues, loglevel), "--name", f"gpu{gpu}@%h"],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu},
        )
        for gpu in _visible_gpus(gpus)
    ]
    if not children:
        raise click.ClickException(f"--gpus {gpus}: no GPU to run on")
    supervisor = Supervisor(children)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor.start()
    stop.wait()
    supervisor.stop()


SHUTDOWN_GRACE_SECONDS = 5


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0), help="Local training workers.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--verbose",
    is_flag=True,
    help="Print the service's log and the workers' output here (embedded mode: they go to FT_HOME/logs/serve.log).",
)
def serve(host: str, port: int, workers: int, loglevel: str, verbose: bool) -> None:
    """Run the API and local workers: the embedded mode needs no server (SQLite, files, a file broker).

    With FT_DATABASE_URL/FT_BROKER_URL set it serves production settings (the database migrated beforehand
    with `finetune db upgrade`; logs on stderr); --workers 0 runs the API alone.
    """
    import logging
    import threading
    import time

    import uvicorn

    from app.observability.logs import configure_logging
    from app.serving import ServeAddress, serve_log_path
    from app.settings import Settings
    from app.supervisor import Child, Supervisor

    started = time.time()
    settings = Settings()
    # Production logs go where its log pipeline reads them; the embedded mode's to a file unless asked.
    log_path = None if verbose or not settings.is_embedded else serve_log_path(settings)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        configure_logging(settings.logs_as, loglevel, stream=log_path.open("a", encoding="utf-8", buffering=1))
        terminal = logging.StreamHandler(sys.stderr)  # what needs a person: errors (a port in use...)
        terminal.setLevel(logging.ERROR)
        logging.getLogger().addHandler(terminal)
        click.echo(f"starting finetune: FT_HOME {settings.home.resolve()}, logs in {log_path}", err=True)
    else:
        configure_logging(settings.logs_as, loglevel)
    settings = _ready_database()
    env = {**os.environ, "FT_HOME": str(settings.home.resolve())}
    children = [Child(f"worker-{i}", _worker_argv("gpu", loglevel), env, log_path) for i in range(workers)]
    if workers:
        children.append(Child("worker-cpu", _worker_argv("cpu", loglevel), env, log_path))  # data set validation
    supervisor = Supervisor(children)
    supervisor.start()
    address = ServeAddress(host, port)
    stopped = threading.Event()
    announcer = threading.Thread(
        target=_announce_when_ready,
        args=(address, settings, workers, log_path, started, stopped),
        name="announce",
        daemon=True,
    )
    announcer.start()
    try:
        # log_config=None: uvicorn's loggers keep the handler configured above instead of their own.
        # timeout_graceful_shutdown: a Ctrl-C answers the requests in flight for a few seconds, then drops them.
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            log_level=loglevel.lower(),
            log_config=None,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    finally:
        stopped.set()
        click.echo("stopping the workers (running jobs checkpoint and go back to the queue)...", err=True)
        supervisor.stop()


def _announce_when_ready(
    address: ServeAddress,
    settings: Settings,
    workers: int,
    log_path: Path | None,
    started: float,
    stopped: threading.Event,
) -> None:
    """Print the block a person reads once the API answers and the workers have beaten."""
    import socket
    import time

    from app.serving import ready_block, wait_until_ready

    host = socket.gethostname()
    names = [f"gpu@{host}", f"cpu@{host}"] if workers else []
    not_ready = wait_until_ready(address, settings, names, started, stopping=stopped.is_set)
    if stopped.is_set():
        return
    block = ready_block(
        address, settings, workers=workers, log_path=log_path, seconds=time.time() - started, not_ready=not_ready
    )
    click.echo(block, err=True)


if __name__ == "__main__":
    main()
