"""The outbox: a webhook delivery row per subscribed endpoint, written in the transaction of the status
change it reports (``record_job_status``, called by the state machine's transitions). Committed together,
so no event is lost when the process dies after the commit (the sweep sends what was never sent) and none
is sent for a change that rolled back. Once committed, ``install_outbox_hooks``' hook sends each new row's
delivery task at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.models import Job, WebhookDelivery
from app.dispatch.after_commit import listen_outermost
from app.ids import new_id
from app.repositories import jobs
from app.schemas.jobs import Job as JobSchema
from app.statuses import JobStatus
from app.webhooks import repository
from app.webhooks.events import event_for_status

if TYPE_CHECKING:
    from app.dispatch.broker import TaskQueue

log = logging.getLogger(__name__)

_PENDING = "finetune.webhook_deliveries"


def event_body(event_type: str, job: Job) -> dict[str, Any]:
    """The body every attempt sends: the event's type and time, and the job as the API shows it then."""
    now = utcnow()
    return {
        "type": event_type,
        "timestamp": now.isoformat(),
        "data": JobSchema.from_row(job, now).model_dump(mode="json"),
    }


def has_subscribers(session: Session, project_id: str, status: JobStatus) -> bool:
    """Whether any of the project's endpoints asked for the event of a job entering ``status``."""
    event_type = event_for_status(status)
    return event_type is not None and bool(repository.subscribed(session, project_id, event_type))


def record_job_status(session: Session, job_id: str, status: JobStatus, project_id: str | None = None) -> list[str]:
    """Queue the webhook deliveries of ``job_id`` entering ``status``, in ``session``'s transaction (its
    project's id, when the caller has it, saves a query)."""
    event_type = event_for_status(status)
    if event_type is None:
        return []
    project_id = project_id or jobs.project_of(session, job_id)
    if project_id is None:
        return []
    endpoints = repository.subscribed(session, project_id, event_type)
    if not endpoints:
        return []
    job = jobs.get_fresh(session, job_id)  # the transition was an UPDATE statement
    body = event_body(event_type, job)
    now = utcnow()
    ids = []
    for endpoint in endpoints:
        delivery = WebhookDelivery(
            id=new_id("delivery"),
            endpoint_id=endpoint.id,
            project_id=project_id,
            event_type=event_type,
            job_id=job_id,
            payload=body,
            status=repository.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        ids.append(delivery.id)
    session.flush()
    session.info.setdefault(_PENDING, []).extend(ids)
    return ids


def send_now(session: Session, delivery_id: str) -> None:
    """Send ``delivery_id``'s task once ``session`` commits (a redelivery asked through the API)."""
    session.info.setdefault(_PENDING, []).append(delivery_id)


def send_deliveries(engine: Engine, queue: TaskQueue, delivery_ids: list[str]) -> None:
    sent = []
    for delivery_id in delivery_ids:
        try:
            queue.send_deliver_webhook(delivery_id)
            sent.append(delivery_id)
        except Exception:
            # Committed and still pending: the sweep sends it (app.dispatch.sweep.sweep).
            log.warning("could not send webhook delivery %s; the sweep will", delivery_id, exc_info=True)
    if sent:
        with Session(engine) as session, session.begin():
            repository.mark_dispatched(session, sent, utcnow())


def install_outbox_hooks(factory: sessionmaker[Session], queue: TaskQueue) -> None:
    def after_commit(session: Session) -> None:
        pending: list[str] = session.info.pop(_PENDING, [])
        if pending:
            engine = session.get_bind()
            assert isinstance(engine, Engine)
            send_deliveries(engine, queue, pending)

    def after_rollback(session: Session) -> None:
        session.info.pop(_PENDING, None)

    listen_outermost(factory, committed=after_commit, rolled_back=after_rollback)
