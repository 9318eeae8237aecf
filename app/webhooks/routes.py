"""``/v1/webhooks``: a project's endpoints (the secret shown on creation and rotation only), their
deliveries, and a redelivery."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path

from app.api.deps import CallerDep, SessionDep, SettingsDep
from app.api.errors import error_responses
from app.api.pagination import After, Limit, list_page
from app.schemas.common import Deleted
from app.webhooks import service
from app.webhooks.schemas import (
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
    WebhookUpdate,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookId = Annotated[str, Path(max_length=64, description="A webhook endpoint id (wh_...).")]
DeliveryId = Annotated[str, Path(max_length=64, description="A delivery id (msg_...), its webhook-id header.")]


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointWithSecret,
    summary="Create a webhook endpoint",
    responses=error_responses(),
)
def create_webhook(
    body: WebhookCreate, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    """Job events are POSTed to `url`, signed per Standard Webhooks with the `secret` shown here once."""
    return WebhookEndpointWithSecret.with_secret(service.create_endpoint(session, settings, caller.project_id, body))


@router.get("", response_model=WebhookEndpointList, summary="List webhook endpoints", responses=error_responses())
def list_webhooks(
    caller: CallerDep, session: SessionDep, after: After = None, limit: Limit = 20
) -> WebhookEndpointList:
    """Newest first."""
    rows, has_more = service.list_endpoints(session, caller.project_id, after=after, limit=limit)
    return list_page(WebhookEndpointList, rows, has_more, WebhookEndpoint.from_row)


@router.get(
    "/{webhook_id}", response_model=WebhookEndpoint, summary="Get a webhook endpoint", responses=error_responses(404)
)
def get_webhook(webhook_id: WebhookId, caller: CallerDep, session: SessionDep) -> WebhookEndpoint:
    return WebhookEndpoint.from_row(service.get_endpoint(session, caller.project_id, webhook_id))


@router.patch(
    "/{webhook_id}", response_model=WebhookEndpoint, summary="Update a webhook endpoint", responses=error_responses(404)
)
def update_webhook(
    webhook_id: WebhookId, body: WebhookUpdate, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpoint:
    """Change the URL, the events, the description, or disable it (`enabled: false` stops new deliveries)."""
    return WebhookEndpoint.from_row(service.update_endpoint(session, settings, caller.project_id, webhook_id, body))


@router.delete(
    "/{webhook_id}", response_model=Deleted, summary="Delete a webhook endpoint", responses=error_responses(404)
)
def delete_webhook(webhook_id: WebhookId, caller: CallerDep, session: SessionDep) -> Deleted:
    """The endpoint and its deliveries; pending retries are dropped."""
    row = service.delete_endpoint(session, caller.project_id, webhook_id)
    return Deleted(id=row.id, object="webhook_endpoint.deleted")


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookEndpointWithSecret,
    summary="Rotate a webhook endpoint's signing secret",
    responses=error_responses(404),
)
def rotate_webhook_secret(webhook_id: WebhookId, caller: CallerDep, session: SessionDep) -> WebhookEndpointWithSecret:
    """A new secret, shown once; attempts from now on (retries included) are signed with it."""
    return WebhookEndpointWithSecret.with_secret(service.rotate_secret(session, caller.project_id, webhook_id))


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveryList,
    summary="List a webhook endpoint's deliveries",
    responses=error_responses(404),
)
def list_deliveries(
    webhook_id: WebhookId,
    caller: CallerDep,
    session: SessionDep,
    status: Literal["pending", "delivered", "failed"] | None = None,
    after: After = None,
    limit: Limit = 20,
) -> WebhookDeliveryList:
    """Newest first, each with its attempts (status code, error, latency) and the next retry while pending."""
    page = service.list_deliveries(session, caller.project_id, webhook_id, status=status, after=after, limit=limit)
    return list_page(
        WebhookDeliveryList, page.rows, page.has_more, lambda row: WebhookDelivery.from_row(row, page.attempts[row.id])
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    summary="Send a delivery again",
    responses=error_responses(404),
)
def redeliver(
    webhook_id: WebhookId, delivery_id: DeliveryId, caller: CallerDep, session: SessionDep
) -> WebhookDelivery:
    """One more attempt now, with the same webhook-id and body."""
    row, attempts = service.redeliver(session, caller.project_id, webhook_id, delivery_id)
    return WebhookDelivery.from_row(row, attempts)
