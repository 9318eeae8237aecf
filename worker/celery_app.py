"""The Celery app of a worker process, and its reliability settings: each says what failure it prevents.

The broker configuration is the API's (``app.dispatch.broker.celery_config``), so both ends agree on the
transport. A worker process runs one job at a time with a prefork pool of one child: the parent never
imports torch or touches CUDA, and each training job runs in a fresh child (``worker_max_tasks_per_child``),
which gives all GPU memory back when it ends. The GPUs a job uses are the ones its child claims in the host's
device slots (``worker.slots``, ``worker.tasks.device_slots_for``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, bootsteps  # type: ignore[import-untyped]

from app.dispatch.broker import celery_config
from app.dispatch.names import GPU_QUEUE
from app.observability.heartbeats import Heartbeats, heartbeats_for
from app.settings import Settings

log = logging.getLogger(__name__)

# Longer than any job may run (training.max_runtime is validated below this): see visibility_timeout.
MAX_JOB_SECONDS = 7 * 24 * 3600


def reliability_settings(settings: Settings) -> dict[str, Any]:
    transport = dict(celery_config(settings)["broker_transport_options"])
    # Redis redelivers a message that was not acknowledged within the visibility timeout. With acks_late a
    # training task stays unacknowledged while it runs, so a timeout shorter than the longest job would
    # hand a running job's message to a second worker (which would find the job claimed and do nothing,
    # but it should not have to). The lease and the reaper handle a worker that really died.
    transport["visibility_timeout"] = MAX_JOB_SECONDS + 3600
    return {
        "broker_transport_options": transport,
        # Acknowledge a task when it ends, not when it starts: a worker that dies mid-job leaves the
        # message in the broker to be delivered again, rather than losing the job.
        "task_acks_late": True,
        # A pool child killed by a signal (kill -9, the OOM killer) has its message requeued, not acked.
        "task_reject_on_worker_lost": True,
        # Reserve one message at a time: a worker busy for hours with a job does not sit on others' jobs.
        "worker_prefetch_multiplier": 1,
        # A lost broker connection must not cancel a running job: the lease protects it; a job cancelled
        # by a network blip would be redone from its last checkpoint for nothing.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Keep retrying the broker at start-up (a compose stack starts Redis and workers together).
        "broker_connection_retry_on_startup": True,
        # Results live in the database; a result backend would be a second, diverging record.
        "task_ignore_result": True,
        # Tasks arrive as JSON only: no pickle from the broker.
        "accept_content": ["json"],
        "task_default_queue": GPU_QUEUE,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # A new pool child imports torch and the engine before it reports ready (worker.tasks.warm_up): seconds
        # of CPU, more on a loaded host. Celery's default of 4 s killed such children over and over (seen in
        # CI on two loaded cores: 72 children killed in a row, a job received and never run).
        "worker_proc_alive_timeout": 120,
    }


def create_celery(settings: Settings, *, warm_training: bool = False) -> Celery:
    """The worker's Celery app, with the tasks registered (``worker.tasks``). ``warm_training``: each pool
    child imports torch and the engine while it waits for a job (see ``worker.tasks.warm_up``)."""
    from worker import tasks

    celery = Celery("finetune-worker", set_as_current=True)
    celery.conf.update(celery_config(settings))
    celery.conf.update(reliability_settings(settings))
    tasks.register(celery, settings, warm_training=warm_training)
    WorkerHeartbeat.settings = settings
    celery.steps["consumer"].add(WorkerHeartbeat)
    return celery


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Records this worker's heartbeat (``app.observability.heartbeats``) every ``worker_heartbeat_seconds``.

    The beat runs on the consumer's timer, in the loop that takes tasks: a worker whose loop hangs, or that lost
    the broker, stops beating. A worker that stops cleanly removes its entry; one that dies leaves it to age.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)  # beat once the worker takes tasks
    settings: Settings

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.store: Heartbeats | None = None
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        self.worker = str(parent.hostname)
        self.store = self.store or heartbeats_for(self.settings)
        self._beat()
        self.timer_entry = parent.timer.call_repeatedly(self.settings.worker_heartbeat_seconds, self._beat)

    def _beat(self) -> None:
        store = self.store  # None once closed: a beat already under way when the worker stopped
        if store is None:
            return
        try:
            store.beat(self.worker)
        except (redis.RedisError, OSError) as error:  # the next beat tries again; the metrics show the gap
            log.warning("could not record the heartbeat of %s: %s", self.worker, error)

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def close(self, parent: Any) -> None:
        """The worker is stopping (a consumer that restarts after losing the broker is only stopped)."""
        self.stop(parent)
        if self.store is not None:
            try:
                self.store.forget(self.worker)
            except (redis.RedisError, OSError) as error:
                log.warning("could not remove the heartbeat of %s: %s", self.worker, error)
            self.store.close()
            self.store = None
