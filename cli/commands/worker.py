"""``finetune worker``: a Celery worker of ``worker/``, or several under a supervisor.

A worker advertises its devices (``--devices``: auto-detected GPUs, else the ``worker_devices`` setting's CPU
slots) and takes the training queues of every device count up to theirs (``gpu``, ``gpu.x2`` ... ``gpu.xN``,
``gpu.all``); the host's device slots (``worker.slots``) keep its jobs from sharing a device.
"""

from __future__ import annotations

import os
import sys

import click


def worker_argv(queues: str, loglevel: str, devices: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "cli", "worker", "--queues", queues, "--loglevel", loglevel]
    return argv + (["--devices", str(devices)] if devices is not None else [])


@click.command()
@click.option("--queues", default="gpu,cpu", show_default=True, help="Queues to take tasks from: gpu (training), cpu.")
@click.option(
    "--gpus",
    default=None,
    help="'all' or a list such as 0,1: one worker process per GPU, each offering all of them; the host's device "
    "slots give each job its own. Default: a single process on whatever device there is (the CPU without a GPU).",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=None,
    help="Devices this worker offers: the first N of its GPUs (default: every visible GPU), or N CPU slots on a "
    "host without GPUs (default: FT_WORKER_DEVICES). With N above 1 it also takes gpu.x2 ... gpu.xN and gpu.all.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--name", default=None, help="The worker's node name (default: <queues>@<host>).")
def worker(queues: str, gpus: str | None, devices: int | None, loglevel: str, name: str | None) -> None:
    """Run a Celery worker: trains jobs (gpu queues) and validates data sets (cpu queue)."""
    from app.observability.logs import configure_logging
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.logs_as, loglevel)
    if gpus is not None:
        _worker_per_gpu(queues, gpus, loglevel)
        return
    from celery import signals  # type: ignore[import-untyped]

    from worker import tasks
    from worker.celery_app import create_celery

    asked = [q.strip() for q in queues.split(",") if q.strip()]
    offered = offered_devices(devices, settings.worker_devices)
    queue_list = with_device_queues(asked, len(offered or [None]))
    argv = ["worker", "--queues", ",".join(queue_list), "--pool", "prefork", "--concurrency", "1"]
    argv += ["--loglevel", loglevel, "--hostname", name or f"{'-'.join(asked)}@%h"]
    training = any(q == "gpu" or q.startswith("gpu.") for q in queue_list)
    if training:
        argv += ["--max-tasks-per-child", "1"]  # a fresh process per job: all GPU memory back after each
        tasks.advertise_devices(offered)  # before the pool forks: its children count the host's slots
    signals.setup_logging.connect(lambda **_: None, weak=False)  # configured above: Celery leaves logging alone
    quiet = ["--quiet"] if settings.logs_as == "json" else []  # no start-up banner among the JSON lines
    create_celery(settings, warm_training=training).worker_main([*quiet, *argv])


def offered_devices(devices: int | None, cpu_devices: int | None) -> list[str] | None:
    """The device ids this worker offers: its visible GPUs (``CUDA_VISIBLE_DEVICES``, else nvidia-smi), the first
    ``devices`` of them; without a GPU, ``devices`` (else ``cpu_devices``) CPU slots; None (no slot counting)
    on a host without GPUs where neither is given."""
    from worker.slots import advertised_devices

    gpus = _gpu_ids()
    if devices is not None and gpus and devices > len(gpus):
        raise click.ClickException(f"--devices {devices}: this worker sees {len(gpus)} GPUs")
    if not gpus and (devices or cpu_devices) is None:
        return None
    return advertised_devices(gpus[:devices], devices or cpu_devices or 1)


def with_device_queues(queues: list[str], devices: int) -> list[str]:
    """``queues``, with the training queues of 2 to ``devices`` devices and ``gpu.all`` where it takes ``gpu``."""
    from app.dispatch.names import training_queue

    if "gpu" not in queues or devices < 2:
        return queues
    extra = [training_queue(n) for n in range(2, devices + 1)] + [training_queue("all")]
    return queues + [q for q in extra if q not in queues]


def _gpu_ids() -> list[str]:
    """This process's GPUs without touching CUDA (the parent forks its pool): CUDA_VISIBLE_DEVICES, else
    nvidia-smi's list; empty on a host without them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        return _visible_gpus("all")
    except click.ClickException:
        return []


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
    """One worker process per GPU, each offering all of them (the host runs as many jobs at once as it has GPUs,
    and a job of N devices takes N of them): the device slots, not the processes, say which GPUs a job gets."""
    import signal
    import threading

    from cli.supervisor import Child, Supervisor

    listed = _visible_gpus(gpus)
    children = [
        Child(
            name=f"worker-gpu{gpu}",
            argv=[*worker_argv(queues, loglevel, len(listed)), "--name", f"gpu{gpu}@%h"],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(listed)},
        )
        for gpu in listed
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
