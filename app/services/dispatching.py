"""Getting a queued job's train task to the broker, and the periodic sweep that makes sure it got there.

A job row records ``dispatched_at`` once the broker has taken its task; it is NULL while the job is
queued and its task not yet sent (a new job, one requeued by the reaper or released by a preempted
worker). The task goes out after the transaction commits; if the broker is down then, or the process
dies in between, the row stays NULL and ``sweep`` sends it again. So a job is never left queued with
no message, and duplicates happen only after a real failure (a duplicate finds the job claimed and
does nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import TypeAdapter
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Job
from app.db.session import transaction
from app.dispatch import send_after_commit
from app.queue import TaskQueue
from app.services import datasets, idempotency
from app.services.job_state import requeue_expired_leases
from app.statuses import JobStatus
from app.webhooks.service import send_due_deliveries

_MAX_RUNTIME = TypeAdapter(timedelta)

if TYPE_CHECKING:
    from app.context import Services

log = logging.getLogger(__name__)

# A data set still validating after this long had its task lost; validation is idempotent.
STALE_VALIDATION = timedelta(minutes=10)


def queue_for_training(session: Session, queue: TaskQueue, job_id: str) -> None:
    """Send the job's train task once ``session`` commits, then record that the broker took it."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    job = session.get(Job, job_id)
    max_runtime = _MAX_RUNTIME.validate_python(job.spec["training"]["max_runtime"]) if job is not None else None
    devices = job.spec["training"].get("devices", 1) if job is not None else 1  # its queue: one per device count

    def send() -> None:
        queue.send_train_job(job_id, max_runtime.total_seconds() if max_runtime is not None else None, devices)
        with engine.begin() as connection:  # after the commit: a short transaction of its own
            connection.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(dispatched_at=utcnow())
            )

    send_after_commit(session, send)


def undispatched_jobs(session: Session, *, grace: timedelta, task_expiry: timedelta) -> list[str]:
    """Queued jobs whose task never reached the broker, or whose task has expired there unconsumed."""
    now = utcnow()
    never_sent = (Job.dispatched_at.is_(None)) & (Job.updated_at < now - grace)
    expired = Job.dispatched_at < now - task_expiry
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, never_sent | expired).order_by(Job.id)
    return list(session.scalars(query))


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)  # lost leases, back to queued
    redispatched: list[str] = field(default_factory=list)  # queued jobs whose task was (re)sent
    revalidated: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)  # webhook deliveries due (retries, lost sends)
    sweeps_stuck: list[str] = field(default_factory=list)  # running sweeps whose driver pass failed


def sweep(services: Services) -> SweepReport:
    """One pass of the periodic sweep (the API runs it every few seconds; any number may run at once:
    every change is a compare-and-set, and a duplicate task is a no-op)."""
    report = SweepReport()
    settings, queue = services.settings, services.queue
    with transaction(services.factory) as session:
        report.requeued = requeue_expired_leases(session)
        for job_id in report.requeued:
            queue_for_training(session, queue, job_id)
    with transaction(services.factory) as session:
        expiry = timedelta(seconds=settings.task_expiry_seconds)
        grace = timedelta(seconds=settings.redispatch_after_seconds)
        fresh = set(report.requeued)
        report.redispatched = [
            job_id for job_id in undispatched_jobs(session, grace=grace, task_expiry=expiry) if job_id not in fresh
        ]
        for job_id in report.redispatched:
            queue_for_training(session, queue, job_id)
    with transaction(services.factory) as session:
        # Never while a validation may still be running: its child process is killed at the time limit.
        stale_after = max(STALE_VALIDATION.total_seconds(), settings.validation_timeout_seconds + 60)
        report.revalidated = datasets.stale_validations(session, stale_after)
        for dataset_id in report.revalidated:
            send_after_commit(session, lambda d=dataset_id: queue.send_validate_dataset(d))  # type: ignore[misc]
        idempotency.purge_expired(session)
    with transaction(services.factory) as session:
        report.webhooks = send_due_deliveries(session, queue, settings)
    from app.sweeps.service import advance_running  # it creates jobs: app.services.jobs imports this module

    report.sweeps_stuck = advance_running(services)  # trials that ended without their worker advancing them
    if report.requeued or report.redispatched or report.revalidated or report.webhooks:
        log.info("sweep: %s", report)
    return report
