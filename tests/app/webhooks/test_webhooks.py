"""Webhooks end to end on both backends: endpoints over the API, the outbox written with the status change,
deliveries POSTed to a real HTTP receiver and verified with the ``standardwebhooks`` library unchanged,
retries with the same webhook-id, redirects and timeouts, the address guard, and redelivery."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from app.context import Runtime
from app.db.models import WebhookDelivery
from app.db.session import transaction
from app.dispatch.sweep import sweep
from app.services import job_state
from app.settings import Settings
from app.statuses import JobStatus
from app.webhooks.delivery import attempt_delivery
from tests.app.factories import make_job
from tests.app.webhooks.receiver import Receiver, running_receiver

RETRY = 0.3  # seconds before each retry (+-20%) in these tests

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The tests' receiver listens on 127.0.0.1: allowlisted, as an operator would an internal network."""
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.0/8"],
            "webhook_retry_schedule": [RETRY, RETRY],
            "webhook_timeout_seconds": 2.0,
        }
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def services(app) -> Runtime:
    return app.state.runtime


async def _endpoint(client, receiver: Receiver, events: list[str] | None = None) -> dict:
    body = {"url": receiver.url, "events": events or ["job.queued"], "description": "ci pipeline"}
    response = await client.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _queued_job(services: Runtime) -> str:
    with transaction(services.factory) as session:
        return make_job(session).id


async def _deliveries(client, endpoint_id: str) -> list[dict]:
    response = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _deliver(services: Runtime, delivery_id: str) -> str:
    return attempt_delivery(services.factory, services.settings, delivery_id)


async def test_endpoint_crud_shows_the_secret_only_on_creation_and_rotation(client, receiver):
    created = await _endpoint(client, receiver, ["job.succeeded", "job.failed"])
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    shown = (await client.get(f"/v1/webhooks/{created['id']}")).json()
    assert "secret" not in shown and shown["events"] == ["job.succeeded", "job.failed"]
    second = await _endpoint(client, receiver)
    page = (await client.get("/v1/webhooks", params={"limit": 1})).json()
    assert [item["id"] for item in page["data"]] == [second["id"]] and page["has_more"]
    page = (await client.get("/v1/webhooks", params={"limit": 1, "after": page["last_id"]})).json()
    assert [item["id"] for item in page["data"]] == [created["id"]] and not page["has_more"]

    patched = await client.patch(f"/v1/webhooks/{created['id']}", json={"events": ["job.cancelled"], "enabled": False})
    assert patched.status_code == 200 and patched.json()["events"] == ["job.cancelled"]
    assert patched.json()["enabled"] is False
    rotated = (await client.post(f"/v1/webhooks/{created['id']}/rotate-secret")).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]

    deleted = await client.delete(f"/v1/webhooks/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    missing = await client.get(f"/v1/webhooks/{created['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


BAD_ENDPOINTS = [
    ({"url": "ftp://example.com/x", "events": ["job.queued"]}, "url"),
    ({"url": "http://user:pw@example.com/x", "events": ["job.queued"]}, "url"),
    ({"url": "http://10.1.2.3/x", "events": ["job.queued"]}, "url"),
    ({"url": "http://169.254.169.254/latest", "events": ["job.queued"]}, "url"),
    ({"url": "https://example.com/x", "events": []}, "events"),
    ({"url": "https://example.com/x", "events": ["job.exploded"]}, "events.0"),
    ({"url": "https://example.com/x", "events": ["job.queued"], "colour": "red"}, "colour"),
]


async def test_bad_endpoints_are_a_422_that_names_the_field(client):
    for body, param in BAD_ENDPOINTS:
        response = await client.post("/v1/webhooks", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["param"] == param, body


async def test_status_changes_arrive_signed_verifiable_and_in_order(client, services, receiver):
    endpoint = await _endpoint(client, receiver, ["job.queued", "job.running", "job.succeeded"])
    job_id = _queued_job(services)
    with transaction(services.factory) as session:
        assert job_state.claim_job(session, job_id, "worker-1", 60)
    with transaction(services.factory) as session:
        assert job_state.finish_job(session, job_id, "worker-1", JobStatus.SUCCEEDED)

    deliveries = list(reversed(await _deliveries(client, endpoint["id"])))  # oldest first
    assert [d["event_type"] for d in deliveries] == ["job.queued", "job.running", "job.succeeded"]
    for delivery in deliveries:
        assert _deliver(services, delivery["id"]) == "delivered"

    verifier = Webhook(endpoint["secret"])
    received = receiver.wait_for(3)
    events = [verifier.verify(request.body, request.headers) for request in received]
    assert [event["type"] for event in events] == ["job.queued", "job.running", "job.succeeded"]
    assert [event["data"]["status"] for event in events] == ["queued", "running", "succeeded"]
    assert {event["data"]["id"] for event in events} == {job_id}
    assert [request.headers["webhook-id"] for request in received] == [d["id"] for d in deliveries]
    shown = await _deliveries(client, endpoint["id"])
    assert {d["status"] for d in shown} == {"delivered"}
    assert all(d["attempts"][0]["status_code"] == 200 and d["attempts"][0]["latency_ms"] >= 0 for d in shown)
    with pytest.raises(WebhookVerificationError):  # another secret does not verify
        Webhook("whsec_" + "A" * 43 + "=").verify(received[0].body, received[0].headers)


async def test_a_rolled_back_change_sends_nothing_and_a_lost_send_is_swept(client, services, receiver, factory):
    endpoint = await _endpoint(client, receiver)
    with pytest.raises(RuntimeError), transaction(services.factory) as session:
        make_job(session)
        raise RuntimeError("the request failed after the change")
    assert await _deliveries(client, endpoint["id"]) == []

    # A session with no after-commit hook: the process that committed died before it could send.
    with transaction(factory) as session:
        make_job(session)
    (pending,) = await _deliveries(client, endpoint["id"])
    report = sweep(services)
    assert report.webhooks == [pending["id"]]
    assert _deliver(services, pending["id"]) == "delivered"


async def test_failures_retry_on_the_schedule_with_the_same_webhook_id(client, services, receiver):
    receiver.answers = [500, 302]
    endpoint = await _endpoint(client, receiver)
    _queued_job(services)
    (delivery,) = await _deliveries(client, endpoint["id"])

    assert _deliver(services, delivery["id"]) == "pending"
    assert _deliver(services, delivery["id"]) == "skipped"  # the retry is not due yet
    (shown,) = await _deliveries(client, endpoint["id"])
    assert shown["attempts"][0]["status_code"] == 500 and shown["next_attempt_at"] is not None
    time.sleep(RETRY * 1.2 + 0.05)
    assert sweep(services).webhooks == [delivery["id"]]  # the sweep sends a due retry
    assert _deliver(services, delivery["id"]) == "pending"
    time.sleep(RETRY * 1.2 + 0.05)
    assert _deliver(services, delivery["id"]) == "delivered"

    received = receiver.wait_for(3)
    assert len(received) == 3 and {request.path for request in received} == {"/hooks"}  # no redirect followed
    assert {request.headers["webhook-id"] for request in received} == {delivery["id"]}
    verifier = Webhook(endpoint["secret"])
    assert all(verifier.verify(request.body, request.headers) for request in received)
    assert len({request.body for request in received}) == 1
    (shown,) = await _deliveries(client, endpoint["id"])
    assert [a["status_code"] for a in shown["attempts"]] == [500, 302, 200]
    assert "redirects are not followed" in shown["attempts"][1]["error"]
    assert shown["status"] == "delivered" and shown["next_attempt_at"] is None


async def test_a_spent_schedule_fails_and_a_redelivery_sends_it_again(client, services, receiver):
    receiver.answers = [503, 503, 503]
    endpoint = await _endpoint(client, receiver)
    _queued_job(services)
    (delivery,) = await _deliveries(client, endpoint["id"])
    statuses = []
    for _ in range(3):
        statuses.append(_deliver(services, delivery["id"]))
        time.sleep(RETRY * 1.2 + 0.05)
    assert statuses == ["pending", "pending", "failed"]

    redelivered = await client.post(f"/v1/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/redeliver")
    assert redelivered.status_code == 202 and redelivered.json()["status"] == "pending"
    assert _deliver(services, delivery["id"]) == "delivered"
    (shown,) = await _deliveries(client, endpoint["id"])
    assert [a["status_code"] for a in shown["attempts"]] == [503, 503, 503, 200]
    assert {request.headers["webhook-id"] for request in receiver.wait_for(4)} == {delivery["id"]}
    missing = await client.post(f"/v1/webhooks/{endpoint['id']}/deliveries/msg_nope/redeliver")
    assert missing.status_code == 404


async def test_a_rotated_secret_signs_the_next_attempts(client, services, receiver):
    endpoint = await _endpoint(client, receiver)
    rotated = (await client.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret")).json()
    _queued_job(services)
    (delivery,) = await _deliveries(client, endpoint["id"])
    assert _deliver(services, delivery["id"]) == "delivered"
    (request,) = receiver.wait_for(1)
    assert Webhook(rotated["secret"]).verify(request.body, request.headers)["type"] == "job.queued"
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(request.body, request.headers)


async def test_a_slow_receiver_times_out_and_is_retried(client, services, receiver):
    receiver.delay_seconds = 1.5
    services.settings = services.settings.model_copy(update={"webhook_timeout_seconds": 0.5})
    endpoint = await _endpoint(client, receiver)
    _queued_job(services)
    (delivery,) = await _deliveries(client, endpoint["id"])
    assert _deliver(services, delivery["id"]) == "pending"
    (shown,) = await _deliveries(client, endpoint["id"])
    assert shown["attempts"][0]["status_code"] is None
    assert shown["attempts"][0]["error"] == "no answer within 0.5 s"


async def test_every_delivery_checks_the_address_after_resolving_it(client, services, receiver):
    endpoint = await _endpoint(client, receiver)
    patched = await client.patch(
        f"/v1/webhooks/{endpoint['id']}", json={"url": receiver.url.replace("127.0.0.1", "localhost")}
    )
    assert patched.status_code == 200
    _queued_job(services)
    (delivery,) = await _deliveries(client, endpoint["id"])
    services.settings = services.settings.model_copy(
        update={"webhook_allowed_networks": []}
    )  # the operator's allowlist gone
    assert _deliver(services, delivery["id"]) == "pending"
    (shown,) = await _deliveries(client, endpoint["id"])
    assert shown["attempts"][0]["error"].startswith("blocked: ")
    assert "is not a public address" in shown["attempts"][0]["error"]
    assert receiver.received == []


async def test_disabled_and_unsubscribed_endpoints_get_nothing_and_deletion_drops_deliveries(
    client, services, receiver
):
    subscribed = await _endpoint(client, receiver, ["job.queued"])
    other = await _endpoint(client, receiver, ["job.failed"])
    disabled = await _endpoint(client, receiver, ["job.queued"])
    await client.patch(f"/v1/webhooks/{disabled['id']}", json={"enabled": False})
    _queued_job(services)
    assert len(await _deliveries(client, subscribed["id"])) == 1
    assert await _deliveries(client, other["id"]) == [] and await _deliveries(client, disabled["id"]) == []
    await client.delete(f"/v1/webhooks/{subscribed['id']}")
    with transaction(services.factory) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
