"""``finetune worker``: a Celery worker of ``worker/``, or one per GPU under a supervisor."""

from __future__ import annotations

import os
import sys

import click


def worker_argv(queues: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", "--queues", queues, "--loglevel", loglevel]


@click.command()
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

    from cli.supervisor import Child, Supervisor

    children = [
        Child(
            name=f"worker-gpu{gpu}",
            argv=[*worker_argv(queues, loglevel), "--name", f"gpu{gpu}@%h"],
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
