"""One attempt at a webhook delivery, as the ``finetune.deliver_webhook`` task makes it.

Claim the due delivery (one worker at a time), check where the URL points after resolving it, POST the
stored body with fresh Standard Webhooks headers (the same ``webhook-id`` on every attempt) to the checked
address with a timeout and without following redirects, then record the attempt: delivered on a 2xx,
otherwise the next retry from ``FT_WEBHOOK_RETRY_SCHEDULE`` with jitter, or failed once it is spent.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.clock import unix_seconds, utcnow
from app.db.models import WebhookAttempt, WebhookDelivery
from app.db.session import transaction
from app.settings import Settings
from app.webhooks import repository
from app.webhooks.guard import BlockedDestination, checked_destination, networks
from app.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

JITTER = 0.2  # each retry delay is drawn from +-20% of the schedule's, so that failed receivers are not hit in step
CLAIM_MARGIN = timedelta(seconds=30)  # an attempt holds its delivery this much longer than the timeout


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    latency_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(settings: Settings, failed_attempts: int, rng: random.Random | None = None) -> float | None:
    """Seconds until the retry after the ``failed_attempts``-th failure, or None when the schedule is spent."""
    schedule = settings.webhook_retry_schedule
    if failed_attempts > len(schedule):
        return None
    base = schedule[failed_attempts - 1]
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def body_bytes(delivery: WebhookDelivery) -> bytes:
    return json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()


def post(settings: Settings, url: str, secret: str, message_id: str, body: bytes) -> Outcome:
    """One POST to ``url`` after the address check; never raises."""
    started = time.monotonic()
    try:
        destination = checked_destination(url, networks(settings.webhook_allowed_networks))
        headers = signed_headers(secret, message_id, unix_seconds(utcnow()), body)
        headers["host"] = destination.host_header
        extensions = {"sni_hostname": destination.sni_hostname} if destination.sni_hostname else {}
        with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False) as http:
            response = http.post(destination.url, content=body, headers=headers, extensions=extensions)
        error = None
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}" + (" (redirects are not followed)" if response.is_redirect else "")
        return Outcome(response.status_code, error, _since(started))
    except BlockedDestination as blocked:
        return Outcome(None, f"blocked: {blocked}", _since(started))
    except httpx.TimeoutException:
        return Outcome(None, f"no answer within {settings.webhook_timeout_seconds:g} s", _since(started))
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as error:  # recorded as the attempt's failure
        return Outcome(None, f"{type(error).__name__}: {error}"[:500], _since(started))


def _since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def record_outcome(session: Session, settings: Settings, delivery: WebhookDelivery, outcome: Outcome) -> None:
    now = utcnow()
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            status_code=outcome.status_code,
            error=outcome.error,
            latency_ms=outcome.latency_ms,
            created_at=now,
        )
    )
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    delivery.locked_until = None
    delivery.dispatched_at = None
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = repository.DELIVERED, now, None
        return
    # A redelivery asked by hand is one attempt; the automatic schedule counts the attempts before it.
    delay = None if delivery.redelivered_at is not None else retry_delay(settings, delivery.attempts)
    if delay is None:
        delivery.status, delivery.next_attempt_at = repository.FAILED, None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=delay)


def attempt_delivery(factory: sessionmaker[Session], settings: Settings, delivery_id: str) -> str:
    """Make the delivery's due attempt; its status after (``skipped`` when it was not due or is taken)."""
    hold = timedelta(seconds=settings.webhook_timeout_seconds) * 3 + CLAIM_MARGIN
    with transaction(factory) as session:
        if not repository.claim(session, delivery_id, utcnow(), hold):
            return "skipped"
        delivery = repository.delivery(session, delivery_id)
        assert delivery is not None
        endpoint_url, secret = _endpoint_of(session, delivery)
        body = body_bytes(delivery)
    outcome = post(settings, endpoint_url, secret, delivery_id, body)  # no transaction open while we wait
    with transaction(factory) as session:
        delivery = repository.delivery(session, delivery_id)
        if delivery is None:  # the endpoint was deleted meanwhile
            return "deleted"
        session.refresh(delivery)
        record_outcome(session, settings, delivery, outcome)
        log.info("webhook %s attempt %d: %s", delivery_id, delivery.attempts, outcome.error or outcome.status_code)
        return delivery.status


def _endpoint_of(session: Session, delivery: WebhookDelivery) -> tuple[str, str]:
    endpoint = repository.endpoint_of(session, delivery)
    assert endpoint is not None  # a delivery is deleted with its endpoint
    return endpoint.url, endpoint.secret
