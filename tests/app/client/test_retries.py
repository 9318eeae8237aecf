"""When the client sends a request again: a request that never reached the server always; one that may
have, only when it is idempotent (reads, cancels, creates with an Idempotency-Key)."""

from __future__ import annotations

import httpx
import pytest

from app.client import Client, ConnectionError, Retry, ServerError

RETRY = Retry(attempts=2, backoff=0.001, max_backoff=0.002)


def scripted(*outcomes: Exception | int) -> tuple[httpx.MockTransport, list[str]]:
    """A transport that answers each request with the next outcome: an exception raised, or a status."""
    sent: list[str] = []
    queue = list(outcomes)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        outcome = queue.pop(0) if queue else 200
        if isinstance(outcome, Exception):
            raise outcome
        if outcome >= 400:
            return httpx.Response(outcome, json={"error": {"code": "unavailable", "message": "busy"}})
        return httpx.Response(200, json={"id": "ds_x", "object": "dataset.deleted", "deleted": True, "status": "ok"})

    return httpx.MockTransport(handle), sent


def client_on(transport: httpx.MockTransport) -> Client:
    return Client("http://finetune.test", "ftk_x", retry=RETRY, transport=transport)


def test_a_read_is_retried_after_a_503_and_a_broken_connection():
    transport, sent = scripted(503, httpx.ReadError("reset"))
    with client_on(transport) as client:
        assert client.healthz().status == "ok"
    assert sent == ["GET", "GET", "GET"]


def test_a_delete_is_retried_only_when_it_never_reached_the_server():
    transport, sent = scripted(httpx.ConnectError("refused"))
    with client_on(transport) as client:
        assert client.datasets.delete("ds_x").deleted
    assert sent == ["DELETE", "DELETE"]

    for outcome in (503, httpx.ReadError("reset")):
        transport, sent = scripted(outcome)
        with client_on(transport) as client, pytest.raises((ServerError, ConnectionError)):
            client.datasets.delete("ds_x")
        assert sent == ["DELETE"]  # it may have deleted: a second DELETE would answer 404


def test_retries_are_bounded():
    transport, sent = scripted(*[httpx.ConnectError("refused")] * 5)
    with client_on(transport) as client, pytest.raises(ConnectionError):
        client.healthz()
    assert len(sent) == 3  # the first try and RETRY.attempts more


def test_a_retry_after_is_honoured_up_to_the_cap():
    retry = Retry(max_backoff=5.0)
    assert retry.delay(0, "2") == 2.0
    assert retry.delay(0, "120") == 5.0
    assert 0.25 <= retry.delay(0) <= 0.5 and 2.0 <= retry.delay(3) <= 4.0
