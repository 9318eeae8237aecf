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

    from fastapi import FastAPI

    from app.settings import Settings
    from cli.serving import ServeAddress

SHUTDOWN_GRACE_SECONDS = 5
# How `serve` configured logging, for its API processes: uvicorn starts each of them afresh (spawn), with no
# handler of the parent's ("level verbose parent-pid").
LOGGING_ENV = "FINETUNE_SERVE_LOGGING"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode (app.main)


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
@click.option(
    "--api-processes",
    type=click.IntRange(min=1),
    default=None,
    help="API processes on the port (default FT_API_PROCESSES, else one per core up to 8 in production, 1 embedded).",
)
def serve(host: str, port: int, workers: int, loglevel: str, verbose: bool, api_processes: int | None) -> None:
    """Run the API and local workers: the embedded mode needs no server (SQLite, files, a file broker).

    With FT_DATABASE_URL/FT_BROKER_URL set it serves production settings (the database migrated beforehand
    with `finetune db upgrade`; logs on stderr); --workers 0 runs the API alone.
    """
    import shutil
    import tempfile
    import threading
    import time

    import uvicorn

    from app.settings import Settings
    from cli.serving import ServeAddress
    from cli.supervisor import Child, Supervisor

    started = time.time()
    settings = Settings()
    log_path = _configure_logging(settings, loglevel, verbose)
    if log_path is not None:
        click.echo(f"starting finetune: FT_HOME {settings.home.resolve()}, logs in {log_path}", err=True)
    processes = api_processes or settings.api_process_count
    os.environ[LOGGING_ENV] = f"{loglevel} {int(verbose)} {os.getpid()}"
    metrics_dir = None
    if processes > 1:  # HTTP metrics summed over the processes at each scrape, whichever answers it
        metrics_dir = tempfile.mkdtemp(prefix="finetune-metrics-")
        os.environ[METRICS_DIR_ENV] = metrics_dir
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
        # workers: API processes sharing the port (uvicorn's supervisor restarts one that dies).
        uvicorn.run(
            "cli.commands.serve:api_app",
            factory=True,
            host=host,
            port=port,
            workers=processes,
            log_level=loglevel.lower(),
            log_config=None,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    finally:
        stopped.set()
        click.echo("stopping the workers (running jobs checkpoint and go back to the queue)...", err=True)
        supervisor.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _configure_logging(settings: Settings, loglevel: str, verbose: bool) -> Path | None:
    """Production logs go where its log pipeline reads them (stderr); the embedded mode's to a file unless
    asked, with errors (a port in use...) on the terminal too. Returns the file, if any."""
    import logging

    from app.observability.logs import configure_logging
    from cli.serving import serve_log_path

    log_path = None if verbose or not settings.is_embedded else serve_log_path(settings)
    if log_path is None:
        configure_logging(settings.logs_as, loglevel)
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Line-buffered appends: each record is one write, so the API processes' lines do not interleave.
    configure_logging(settings.logs_as, loglevel, stream=log_path.open("a", encoding="utf-8", buffering=1))
    terminal = logging.StreamHandler(sys.stderr)  # what needs a person
    terminal.setLevel(logging.ERROR)
    logging.getLogger().addHandler(terminal)
    return log_path


def api_app() -> FastAPI:
    """The app of one API process (uvicorn's factory). In each process uvicorn starts for `--api-processes`:
    logging configured as `serve` configured its own (a spawned process inherits none of its handlers), and
    a SIGKILL when `serve` dies, as its workers get (else a `serve` killed outright leaves them on the port)."""
    from app.main import create_app
    from app.settings import Settings
    from cli.supervisor import die_with_parent_hook

    level, verbose, parent = os.environ.get(LOGGING_ENV, "INFO 0 0").split()
    settings = Settings()
    if int(parent) != os.getpid():
        die_with_parent = die_with_parent_hook()
        if die_with_parent is not None:
            die_with_parent()
        _configure_logging(settings, level, verbose == "1")
    return create_app(settings)


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
