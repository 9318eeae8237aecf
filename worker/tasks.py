"""The worker's tasks: thin adapters that take an id and hand it to the code that does the work.

``finetune.train_job`` runs ``worker.runner.run_job`` (claim, train, record); ``finetune.validate_dataset``
runs ``app.services.dataset_validation.run_dataset_validation``; ``finetune.deliver_webhook`` runs
``app.webhooks.delivery.attempt_delivery``. All are idempotent, so the redelivery
that ``acks_late`` allows is safe: a second delivery finds the job claimed or the data set validated.

Signals: SIGTERM to the worker (a deploy, a spot reclaim) starts Celery's warm shutdown in the parent,
which tells the pool child with SIGUSR2 (SIGUSR1 is billiard's soft time limit); the child's job then
checkpoints at its next step and is requeued for another worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from celery import Celery, Task, signals  # type: ignore[import-untyped]
from celery.exceptions import Reject, TimeLimitExceeded  # type: ignore[import-untyped]

from app.context import Runtime
from app.db.session import transaction
from app.dispatch.names import DELIVER_WEBHOOK, EXPORT_JOB, TRAIN_JOB, VALIDATE_DATASET, training_queue
from app.services.dataset_validation import run_dataset_validation
from app.services.job_state import JobError, abort_job
from app.settings import Settings
from app.webhooks.delivery import attempt_delivery

log = logging.getLogger(__name__)

PREEMPT_SIGNAL = signal.SIGUSR2
# Set in a pool child when its parent is shutting down: the running job checkpoints and is requeued.
preempt_requested = threading.Event()

_services: dict[int, Runtime] = {}  # per process: an engine must not cross a fork


def process_services(settings: Settings) -> Runtime:
    pid = os.getpid()
    if pid not in _services:
        _services.clear()
        _services[pid] = Runtime.from_settings(settings)
    return _services[pid]


class JobTask(Task):  # type: ignore[misc]
    """Records what the child cannot: a hard time limit kills the child, and the parent fails the job."""

    settings: Settings

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            message = f"the job ran past its hard time limit ({exc}); raise training.max_runtime"
            with transaction(process_services(self.settings).factory) as session:
                abort_job(session, str(args[0]), JobError("timeout", message))


def register(celery: Celery, settings: Settings, *, warm_training: bool = False) -> None:
    JobTask.settings = settings
    _warm_up_config.update(settings=settings, training=warm_training)

    # max_retries None: a job whose devices are busy is tried again for as long as it takes (device_slots_for).
    @celery.task(name=TRAIN_JOB, base=JobTask, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def train_job(self: Task, job_id: str) -> str:
        from worker.runner import run_job  # torch is imported here, in the pool child only

        if draining_marker(os.getppid()).exists():
            # The parent is shutting down (a deploy): leave the job to a worker that stays.
            raise Reject(f"worker shutting down: job {job_id} left for another worker", requeue=True)
        services = process_services(settings)
        with device_slots_for(services, job_id) as wanted:
            if wanted is not None:  # fewer devices free on this host than the job asks for: a later try
                log.info(
                    "job %s: its %d device(s) are not free on this host; again in %.0f s",
                    job_id,
                    wanted.devices,
                    wanted.wait_seconds,
                )
                raise self.retry(countdown=wanted.wait_seconds, queue=wanted.queue)
            listen_for_preemption()
            return run_job(services, job_id, preempt_requested, self.request.hostname)

    @celery.task(name=EXPORT_JOB)  # type: ignore[untyped-decorator]
    def export_job(export_id: str) -> str:
        from app.services.exports import run_export  # torch and the exporter, in the pool child only

        return run_export(process_services(settings), export_id)

    @celery.task(name=VALIDATE_DATASET)  # type: ignore[untyped-decorator]
    def validate_dataset(dataset_id: str) -> str:
        services = process_services(settings)
        status = run_dataset_validation(services.factory, services.store, settings, dataset_id)
        return str(status)

    @celery.task(name=DELIVER_WEBHOOK)  # type: ignore[untyped-decorator]
    def deliver_webhook(delivery_id: str) -> str:
        """One attempt; a failure schedules the retry in the row, which the API's sweep sends when due."""
        return attempt_delivery(process_services(settings).factory, settings, delivery_id)


DEVICE_WAIT_SECONDS = 15.0  # a job whose devices are busy on this host is tried again this much later
_advertised: dict[str, list[str]] = {}  # "devices": the device ids this worker offers (``finetune worker``)


def advertise_devices(devices: list[str] | None) -> None:
    """The device ids this worker process offers (GPU ids, or ``cpu0``...), set in the parent before the pool
    forks; None: no slot counting (the embedded mode's workers, tests that run a job directly)."""
    _advertised.clear()
    if devices is not None:
        _advertised["devices"] = list(devices)


def _job_devices(services: Runtime, job_id: str) -> int | str | None:
    from app.repositories import jobs as job_rows

    with transaction(services.factory) as session:
        job = job_rows.get_any(session, job_id)
        return None if job is None else job.spec.get("training", {}).get("devices", 1)


class Busy(NamedTuple):
    """A job's devices are not free on this host: how many it wants, when to try again, and on which queue."""

    devices: int
    wait_seconds: float
    queue: str


@contextlib.contextmanager
def device_slots_for(services: Runtime, job_id: str) -> Iterator[Busy | None]:
    """Holds the job's devices on this host (``worker.slots``) while the body runs, whatever its ending; yields
    None, or ``Busy`` when they are not free. On GPUs the job's processes see only
    the claimed ones (``CUDA_VISIBLE_DEVICES``, set before the job touches CUDA)."""
    from worker.slots import SLOTS_FILE, DeviceSlots

    advertised = _advertised.get("devices")
    asked = _job_devices(services, job_id) if advertised is not None else None
    if advertised is None or asked is None:  # no counting here, or no such job (the runner says so)
        yield None
        return
    on_gpus = not advertised[0].startswith("cpu")
    count = (len(advertised) if on_gpus else 1) if asked == "all" else int(asked)
    slots = DeviceSlots(services.settings.home / SLOTS_FILE, advertised)
    claimed = slots.claim(count, job_id)
    if claimed is None:
        yield Busy(count, DEVICE_WAIT_SECONDS, training_queue(asked))
        return
    if on_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(claimed)
    try:
        yield None
    finally:
        slots.release()


def draining_marker(pid: int) -> Path:
    """A file that says worker process ``pid`` is shutting down, for its pool children to see."""
    return Path(tempfile.gettempdir()) / f"finetune-worker-{pid}.draining"


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _clear_stale_marker(**_: Any) -> None:
    draining_marker(os.getpid()).unlink(missing_ok=True)


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _remove_marker(**_: Any) -> None:
    draining_marker(os.getpid()).unlink(missing_ok=True)


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _preempt_running_jobs(sig: str = "", how: str = "", **_: Any) -> None:
    """In the parent, on warm shutdown: ask each pool child that runs a training job to checkpoint it and
    hand it back (idle children just stop with the pool); a task that still arrives is left for others."""
    from celery.worker import state  # type: ignore[import-untyped]

    draining_marker(os.getpid()).touch()

    for request in list(state.active_requests):
        if request.name == TRAIN_JOB and request.worker_pid:
            try:
                os.kill(request.worker_pid, PREEMPT_SIGNAL)
            except ProcessLookupError:
                continue


_warm_up_config: dict[str, Any] = {}


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def warm_up(**_: Any) -> None:
    """In a new pool child, while it waits for its job: open the database and broker connections, and for a
    training worker import torch and the engine (seconds of CPU, and import holds the GIL: done at claim
    time it would delay the claim and starve the lease keeper's thread). The parent never imports torch."""
    settings = _warm_up_config.get("settings")
    if settings is None:
        return
    process_services(settings)
    if _warm_up_config.get("training"):
        from worker.runner import import_engine

        import_engine()


def listen_for_preemption() -> None:
    """In a pool child, as a training task starts: SIGUSR2 from the parent means "checkpoint now and stop".

    Installed per task: billiard resets the child's signal handlers after the process initializer.
    """
    preempt_requested.clear()
    signal.signal(PREEMPT_SIGNAL, lambda *_args: preempt_requested.set())
    signal.siginterrupt(PREEMPT_SIGNAL, False)  # restart the system call it interrupts
