"""The periodic sweep: lost leases requeued, queued jobs dispatched fairly, lost tasks sent again.

A job row records ``dispatched_at`` once the broker has taken its task; it is NULL while the job is
queued and its task not yet sent (a new job waiting for its project's turn, one requeued by the reaper or
released by a preempted worker). The task goes out after the transaction commits; if the broker is down
then, or the process dies in between, the row stays NULL and a later dispatch pass sends it again; a
broker that lost its messages (a Redis restart) has them sent again too. So a job is never left queued with
no message, and duplicates happen only after a real failure (a duplicate finds the job claimed and
does nothing).

Right after PostgreSQL comes back from an outage, the reaper waits one lease period: the workers that kept
training through it (up to ``db_outage_grace_seconds``) renew their leases before any is taken from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.session import transaction
from app.dispatch.admission import dispatch_waiting
from app.dispatch.after_commit import send_after_commit
from app.repositories import database, jobs
from app.services import datasets, idempotency
from app.services.job_state import requeue_expired_leases
from app.stores import abort_abandoned_writes_when_due
from app.webhooks.service import send_due_deliveries

if TYPE_CHECKING:
    from app.context import Runtime

log = logging.getLogger(__name__)

# A data set still validating after this long had its task lost; validation is idempotent.
STALE_VALIDATION = timedelta(minutes=10)


def forget_lost_sends(session: Session, *, task_expiry: timedelta, broker_emptied: bool) -> list[str]:
    """Queued jobs whose task the broker no longer holds, marked not dispatched so that a dispatch pass
    sends them again: tasks past their expiry, and every sent one when the broker came back empty (a Redis
    restart without persistence). A duplicate of a task still held finds the job claimed: a no-op."""
    forgotten = jobs.queued_sent(session, before=None if broker_emptied else utcnow() - task_expiry)
    if forgotten:
        jobs.forget_sends(session, forgotten)
    return forgotten


def database_restarted_within(session: Session, seconds: float) -> bool:
    """PostgreSQL came back from an outage less than ``seconds`` ago: its workers have not had a lease
    period to reconnect and renew yet, so an expired lease says nothing about them (SQLite: never)."""
    started = database.server_started_at(session)
    return started is not None and utcnow() - started < timedelta(seconds=seconds)


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)  # lost leases, back to queued
    resent: list[str] = field(default_factory=list)  # queued jobs whose task the broker lost (expiry, restart)
    redispatched: list[str] = field(default_factory=list)  # waiting jobs whose task was sent (fairly)
    revalidated: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)  # webhook deliveries due (retries, lost sends)
    sweeps_stuck: list[str] = field(default_factory=list)  # running sweeps whose driver pass failed


def sweep(services: Runtime) -> SweepReport:
    """One pass of the periodic sweep (the API runs it every few seconds; any number may run at once:
    every change is a compare-and-set, dispatch passes take turns, and a duplicate task is a no-op)."""
    report = SweepReport()
    settings, queue = services.settings, services.queue
    with transaction(services.factory) as session:
        if not database_restarted_within(session, settings.lease_seconds + settings.lease_renew_seconds):
            report.requeued = requeue_expired_leases(session)
    broker_emptied = queue.broker_emptied()
    with transaction(services.factory) as session:
        expiry = timedelta(seconds=settings.task_expiry_seconds)
        report.resent = forget_lost_sends(session, task_expiry=expiry, broker_emptied=broker_emptied)
    report.redispatched = dispatch_waiting(services.factory, queue, settings)
    with transaction(services.factory) as session:
        # Never while a validation may still be running: its child process is killed at the time limit.
        stale_after = max(STALE_VALIDATION.total_seconds(), settings.validation_timeout_seconds + 60)
        report.revalidated = datasets.stale_validations(session, stale_after)
        for dataset_id in report.revalidated:
            send_after_commit(session, lambda d=dataset_id: queue.send_validate_dataset(d))  # type: ignore[misc]
        idempotency.purge_expired(session)
    with transaction(services.factory) as session:
        report.webhooks = send_due_deliveries(session, queue, settings)
    from app.sweeps.service import advance_running  # it creates jobs: app.services.jobs imports this package

    report.sweeps_stuck = advance_running(services)  # trials that ended without their worker advancing them
    abort_abandoned_writes_when_due(services.store, settings)  # the store's housekeeping: hourly, in a thread
    if report.requeued or report.resent or report.redispatched or report.revalidated or report.webhooks:
        log.info("sweep: %s", report)
    return report
