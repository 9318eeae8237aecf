"""``finetune serve``: the API and local workers in one process tree (the embedded mode), or the API alone."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from cli.commands.database import ready_database
from cli.commands.worker import worker_argv

if TYPE_CHECKING:
    import threading
    from pathlib import Path

    from app.settings import Settings
    from cli.serving import ServeAddress

SHUTDOWN_GRACE_SECONDS = 5


@click.command()
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
    from app.settings import Settings
    from cli.serving import ServeAddress, serve_log_path
    from cli.supervisor import Child, Supervisor

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
    settings = ready_database()
    env = {**os.environ, "FT_HOME": str(settings.home.resolve())}
    children = [Child(f"worker-{i}", worker_argv("gpu", loglevel), env, log_path) for i in range(workers)]
    if workers:
        children.append(Child("worker-cpu", worker_argv("cpu", loglevel), env, log_path))  # data set validation
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

    from cli.serving import ready_block, wait_until_ready

    host = socket.gethostname()
    names = [f"gpu@{host}", f"cpu@{host}"] if workers else []
    not_ready = wait_until_ready(address, settings, names, started, stopping=stopped.is_set)
    if stopped.is_set():
        return
    block = ready_block(
        address, settings, workers=workers, log_path=log_path, seconds=time.time() - started, not_ready=not_ready
    )
    click.echo(block, err=True)
