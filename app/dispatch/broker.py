"""A Celery client that sends tasks by name (``app.dispatch.names``); it defines no tasks.

``celery_config`` is the broker configuration the worker's Celery app starts from too, so both ends
agree on the transport: Redis in production, kombu's serverless ``filesystem://`` transport under
``$FT_HOME/broker`` in the embedded mode.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]

from app.dispatch.names import DELIVER_WEBHOOK, EXPORT_JOB, QUEUE_OF, TRAIN_JOB, VALIDATE_DATASET, training_queue
from app.settings import Settings

log = logging.getLogger(__name__)

# A broker that does not answer makes the send fail fast instead of hanging the request; the row is
# committed already, and the worker's sweep re-sends what was never delivered.
TIME_LIMIT_GRACE_SECONDS = 120.0  # between the engine's own stop, the soft limit and the hard limit
_SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.celery_broker_url.startswith("filesystem"):
        folder = settings.broker_path
        for name in ("queue", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    if settings.broker_key_prefix:
        return {"global_keyprefix": settings.broker_key_prefix}
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_timeout": 3.0,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE_OF[TRAIN_JOB],
    }


def marker_client_name(key_prefix: str) -> str:
    """The name the sweep's marker connection shows in Redis's CLIENT LIST (no spaces: Redis refuses them)."""
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in f"{key_prefix}finetune-broker-marker")


class TaskQueue:
    """Sends the worker's tasks. Call its ``send_*`` through ``app.dispatch.after_commit.send_after_commit``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery = Celery("finetune-api", set_as_current=False)
        self.celery.conf.update(celery_config(settings))
        # The sweep's marker client, kept: its pool keeps one connection for every pass (it connects on first use).
        self._marker: redis.Redis | None = None
        if settings.celery_broker_url.startswith(("redis://", "rediss://")):
            self._marker = redis.Redis.from_url(
                settings.celery_broker_url,
                socket_timeout=3,
                client_name=marker_client_name(settings.broker_key_prefix),
            )

    def _send(self, name: str, object_id: str, queue: str | None = None, **options: Any) -> str:
        result = self.celery.send_task(
            name,
            args=[object_id],
            queue=queue or QUEUE_OF[name],
            expires=self.settings.task_expiry_seconds,
            retry=True,
            retry_policy=_SEND_RETRY_POLICY,
            **options,
        )
        return str(result.id)

    def send_train_job(self, job_id: str, max_runtime_seconds: float | None = None, devices: int | str = 1) -> str:
        """The job's train task, with Celery time limits from the spec's ``training.max_runtime``: the engine
        stops itself at that limit (code ``timeout``); the soft limit, a little later, interrupts a step that
        hangs; the hard limit kills the pool child."""
        limits: dict[str, float] = {}
        if max_runtime_seconds is not None:
            soft = max_runtime_seconds + TIME_LIMIT_GRACE_SECONDS
            limits = {"soft_time_limit": soft, "time_limit": soft + TIME_LIMIT_GRACE_SECONDS}
        return self._send(TRAIN_JOB, job_id, queue=training_queue(devices), **limits)

    def send_validate_dataset(self, dataset_id: str) -> str:
        return self._send(VALIDATE_DATASET, dataset_id)

    def send_deliver_webhook(self, delivery_id: str) -> str:
        return self._send(DELIVER_WEBHOOK, delivery_id)

    def send_export_job(self, export_id: str) -> str:
        return self._send(EXPORT_JOB, export_id)

    def broker_emptied(self) -> bool:
        """True once after the broker came back without its messages (Redis restarted with no persistence,
        or flushed): a marker key set when missing is gone with them. Its first setting counts too, which
        re-sends the tasks in flight once (a duplicate is a no-op). False for other transports, and while
        Redis does not answer (the next sweep asks again)."""
        if self._marker is None:
            return False
        try:
            return bool(self._marker.set(f"{self.settings.broker_key_prefix}finetune:broker-marker", "1", nx=True))
        except redis.RedisError:
            log.warning("the broker did not answer the sweep", exc_info=True)
            return False

    def check(self) -> None:
        """Raise unless the broker accepts a connection (readiness)."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    def close(self) -> None:
        self.celery.close()
        if self._marker is not None:
            self._marker.close()
