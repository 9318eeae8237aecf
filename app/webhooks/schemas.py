"""Webhook endpoints and their deliveries, as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.clock import unix_seconds
from app.schemas.common import ListPage

if TYPE_CHECKING:
    from app.db.models import WebhookAttempt as AttemptRow
    from app.db.models import WebhookDelivery as DeliveryRow
    from app.db.models import WebhookEndpoint as EndpointRow

EventName = Literal[
    "job.queued", "job.running", "job.paused", "job.succeeded", "job.failed", "job.cancelled", "job.pruned"
]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, strip_whitespace=True)]
Description = Annotated[str, StringConstraints(max_length=500)]
Events = Annotated[list[EventName], Field(min_length=1, max_length=16, description="The events to send.")]


def _seconds(moment: datetime | None) -> int | None:
    return unix_seconds(moment) if moment is not None else None


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="An http(s) URL that answers 2xx to a POST; public addresses only.")
    events: Events
    description: Description = ""


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = None


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: EndpointRow) -> WebhookEndpoint:
        return cls(
            id=row.id,
            url=row.url,
            events=list(row.events),
            description=row.description,
            enabled=row.enabled,
            created_at=unix_seconds(row.created_at),
            updated_at=unix_seconds(row.updated_at),
        )


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str = Field(description="The signing secret (whsec_...): shown here only, on creation and rotation.")

    @classmethod
    def with_secret(cls, row: EndpointRow) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpoint.from_row(row).model_dump(), secret=row.secret)


class WebhookEndpointList(ListPage[WebhookEndpoint]):
    pass


class WebhookAttempt(BaseModel):
    number: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came back.")
    error: str | None = Field(description="Why the attempt failed: an HTTP status, a timeout, a blocked address.")
    latency_ms: int
    created_at: int

    @classmethod
    def from_row(cls, row: AttemptRow) -> WebhookAttempt:
        return cls(
            number=row.number,
            status_code=row.status_code,
            error=row.error,
            latency_ms=row.latency_ms,
            created_at=unix_seconds(row.created_at),
        )


class WebhookDelivery(BaseModel):
    id: str = Field(description="The webhook-id header of every attempt: deduplicate on it.")
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    event_type: str
    job_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt]
    next_attempt_at: int | None = Field(description="When the next retry is due, while pending.")
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any] = Field(description="The body each attempt sends.")
    created_at: int
    delivered_at: int | None

    @classmethod
    def from_row(cls, row: DeliveryRow, attempts: list[AttemptRow]) -> WebhookDelivery:
        return cls(
            id=row.id,
            endpoint_id=row.endpoint_id,
            event_type=row.event_type,
            job_id=row.job_id,
            status=row.status,
            attempts=[WebhookAttempt.from_row(attempt) for attempt in attempts],
            next_attempt_at=_seconds(row.next_attempt_at),
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            payload=row.payload,
            created_at=unix_seconds(row.created_at),
            delivered_at=_seconds(row.delivered_at),
        )


class WebhookDeliveryList(ListPage[WebhookDelivery]):
    pass
