"""The Celery app of a worker process, and its reliability settings: each says what failure it prevents.

The broker configuration is the API's (``app.queue.celery_config``), so both ends agree on the
transport. A worker process serves one GPU (``CUDA_VISIBLE_DEVICES`` set by ``finetune worker``) with
a prefork pool of one child: the parent never imports torch or touches CUDA, and each training job
runs in a fresh child (``worker_max_tasks_per_child``), which gives all GPU memory back when it ends.
"""

from __future__ import annotations

from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from app.queue import celery_config
from app.settings import Settings
from app.tasks import GPU_QUEUE

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
    }


def create_celery(settings: Settings) -> Celery:
    """The worker's Celery app, with the tasks registered (``worker.tasks``)."""
    from worker import tasks

    celery = Celery("finetune-worker", set_as_current=True)
    celery.conf.update(celery_config(settings))
    celery.conf.update(reliability_settings(settings))
    tasks.register(celery, settings)
    return celery
