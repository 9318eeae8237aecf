"""Webhook endpoints for clients (create, read, update, delete, rotate the secret), their deliveries, a
redelivery, and the sweep's part: sending the deliveries that are due."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.dispatch.broker import TaskQueue
from app.errors import NotFound, Unprocessable
from app.ids import new_id
from app.settings import Settings
from app.webhooks import outbox, repository
from app.webhooks.guard import BlockedDestination, check_literal, networks
from app.webhooks.schemas import WebhookCreate, WebhookUpdate
from app.webhooks.signing import new_secret


@dataclass(frozen=True)
class DeliveryPage:
    rows: list[WebhookDelivery]
    attempts: dict[str, list[WebhookAttempt]]
    has_more: bool


def _check_url(settings: Settings, url: str) -> None:
    try:
        check_literal(url, networks(settings.webhook_allowed_networks))
    except BlockedDestination as blocked:
        raise Unprocessable(str(blocked), param="url", code="webhook_url_not_allowed") from None


def create_endpoint(session: Session, settings: Settings, project_id: str, request: WebhookCreate) -> WebhookEndpoint:
    _check_url(settings, request.url)
    now = utcnow()
    row = WebhookEndpoint(
        id=new_id("webhook"),
        project_id=project_id,
        url=request.url,
        events=list(dict.fromkeys(request.events)),
        description=request.description,
        secret=new_secret(),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_endpoint(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    row = repository.endpoint(session, project_id, endpoint_id)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}", param="webhook_id")
    return row


def list_endpoints(
    session: Session, project_id: str, *, after: str | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    return repository.endpoints_page(session, project_id, after=after, limit=limit)


def update_endpoint(
    session: Session, settings: Settings, project_id: str, endpoint_id: str, request: WebhookUpdate
) -> WebhookEndpoint:
    row = get_endpoint(session, project_id, endpoint_id)
    if request.url is not None:
        _check_url(settings, request.url)
        row.url = request.url
    if request.events is not None:
        row.events = list(dict.fromkeys(request.events))
    if request.description is not None:
        row.description = request.description
    if request.enabled is not None:
        row.enabled = request.enabled
    row.updated_at = utcnow()
    return row


def delete_endpoint(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    """The endpoint and its deliveries (pending ones are never sent)."""
    row = get_endpoint(session, project_id, endpoint_id)
    session.delete(row)
    return row


def rotate_secret(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    """A new signing secret, used from the next attempt on (pending retries included); the old one stops."""
    row = get_endpoint(session, project_id, endpoint_id)
    row.secret = new_secret()
    row.updated_at = utcnow()
    return row


def list_deliveries(
    session: Session, project_id: str, endpoint_id: str, *, status: str | None, after: str | None, limit: int
) -> DeliveryPage:
    endpoint = get_endpoint(session, project_id, endpoint_id)
    rows, has_more = repository.deliveries_page(session, endpoint.id, status=status, after=after, limit=limit)
    return DeliveryPage(rows, repository.attempts_of(session, [row.id for row in rows]), has_more)


def redeliver(
    session: Session, project_id: str, endpoint_id: str, delivery_id: str
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    """Send a delivery again now, with the same webhook-id and body (one attempt; the receiver deduplicates)."""
    endpoint = get_endpoint(session, project_id, endpoint_id)
    row = repository.delivery(session, delivery_id)
    if row is None or row.endpoint_id != endpoint.id:
        raise NotFound(f"no delivery {delivery_id} of webhook endpoint {endpoint_id}", param="delivery_id")
    now = utcnow()
    row.status = repository.PENDING
    row.next_attempt_at = now
    row.dispatched_at = None
    row.redelivered_at = now
    outbox.send_now(session, row.id)
    return row, repository.attempts_of(session, [row.id])[row.id]


def send_due_deliveries(session: Session, queue: TaskQueue, settings: Settings) -> list[str]:
    """The sweep's part: a task for every delivery whose attempt is due and was not sent (retries, and rows
    whose after-commit send was lost with its process)."""
    now = utcnow()
    due = repository.due(session, now, now - timedelta(seconds=settings.redispatch_after_seconds))
    for delivery_id in due:
        outbox.send_now(session, delivery_id)
    return due
