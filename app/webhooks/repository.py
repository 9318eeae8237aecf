"""Webhook queries: endpoints scoped to a project, deliveries of an endpoint, the outbox's due rows, and the
compare-and-set that lets one worker at a time attempt a delivery."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.repositories.pagination import keyset_page

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def endpoint(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    return session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.project_id == project_id)
    )


def endpoint_of(session: Session, delivery: WebhookDelivery) -> WebhookEndpoint | None:
    """The endpoint a delivery goes to, whatever its project (the delivery task acts for every project)."""
    return session.get(WebhookEndpoint, delivery.endpoint_id)


def endpoints_page(
    session: Session, project_id: str, *, after: str | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)
    return keyset_page(session, query, WebhookEndpoint.id, after=after, limit=limit)


def subscribed(session: Session, project_id: str, event_type: str) -> list[WebhookEndpoint]:
    """The project's enabled endpoints that asked for ``event_type`` (a handful per project: filtered here)."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id, WebhookEndpoint.enabled)
    return [found for found in session.scalars(query.order_by(WebhookEndpoint.id)) if event_type in found.events]


def delivery(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def deliveries_page(
    session: Session, endpoint_id: str, *, status: str | None, after: str | None, limit: int
) -> tuple[list[WebhookDelivery], bool]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return keyset_page(session, query, WebhookDelivery.id, after=after, limit=limit)


def attempts_of(session: Session, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    query = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
    )
    for attempt in session.scalars(query):
        found[attempt.delivery_id].append(attempt)
    return found


def claim(session: Session, delivery_id: str, now: datetime, hold: timedelta) -> bool:
    """Take a due, pending delivery for one attempt (held for ``hold``): False if it is not due, done, or
    another worker is attempting it."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
        )
        .values(locked_until=now + hold, attempts=WebhookDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def due(session: Session, now: datetime, redispatch_before: datetime, limit: int = 500) -> list[str]:
    """Pending deliveries whose attempt is due and whose task was not sent (or was sent long ago and lost)."""
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            or_(WebhookDelivery.dispatched_at.is_(None), WebhookDelivery.dispatched_at < redispatch_before),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def mark_dispatched(session: Session, delivery_ids: list[str], now: datetime) -> None:
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.status == PENDING)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
