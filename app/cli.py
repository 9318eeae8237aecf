"""``finetune``: the command line. This module imports only click at startup; each command imports what
it needs when it runs, so ``finetune --help`` answers at once (no FastAPI, SQLAlchemy or torch).

The service's own commands live here (``serve``, ``worker``, ``db``, ``keys``, ``store``); the commands that talk
to a running service through ``app.client`` (``datasets``, ``jobs``) live in ``app.commands``.
Exit codes: ``app.commands.options`` (0 success, 1 failure, 2 usage, 3 unreachable, 4 not found).
"""

from __future__ import annotations

import os
import sys

import click

from app.commands.datasets import datasets
from app.commands.jobs import jobs
from app.commands.options import EXIT_CODES_HELP, GlobalOptions


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
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None, as_json: bool) -> None:
    options = ctx.ensure_object(GlobalOptions)
    options.url, options.api_key = url, api_key
    options.json = options.json or as_json


main.add_command(datasets)
main.add_command(jobs)


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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=0), help="Local training workers.")
@click.option("--loglevel", default="INFO", show_default=True)
def serve(host: str, port: int, workers: int, loglevel: str) -> None:
    """Run the API and local workers: the embedded mode needs no server (SQLite, files, a file broker).

    With FT_DATABASE_URL/FT_BROKER_URL set it serves production settings; --workers 0 runs the API alone.
    """
    import uvicorn

    from app.db.migrate import upgrade
    from app.observability.logs import configure_logging
    from app.settings import Settings
    from app.supervisor import Child, Supervisor

    settings = Settings()
    configure_logging(settings.logs_as, loglevel)
    upgrade(settings)
    env = {**os.environ, "FT_HOME": str(settings.home.resolve())}
    children = [Child(f"worker-{i}", _worker_argv("gpu", loglevel), env) for i in range(workers)]
    if workers:
        children.append(Child("worker-cpu", _worker_argv("cpu", loglevel), env))  # data set validation
    supervisor = Supervisor(children)
    supervisor.start()
    click.echo(f"finetune is serving at http://{host}:{port} (API docs at http://{host}:{port}/docs)", err=True)
    try:
        # log_config=None: uvicorn's loggers keep the handler configured above instead of their own.
        uvicorn.run(
            "app.main:create_app", factory=True, host=host, port=port, log_level=loglevel.lower(), log_config=None
        )
    finally:
        click.echo("stopping the workers (running jobs checkpoint and go back to the queue)...", err=True)
        supervisor.stop()


if __name__ == "__main__":
    main()
