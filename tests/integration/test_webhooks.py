"""Webhooks on the production stack: the API and a real Celery worker on the cpu queue, PostgreSQL and Redis.

A job's status changes reach a real receiver, signed and verified with the ``standardwebhooks`` library
unchanged; a receiver that fails first gets the same webhook-id again when the API's sweep sends the retry;
the CLI creates, lists, shows deliveries of and deletes an endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.app.servers import REPO
from tests.app.webhooks.receiver import Receiver, running_receiver
from tests.integration.stack import Stack, job_body, running_stack

WEBHOOK_ENV = {"FT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "FT_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5"}


@pytest.fixture(scope="module")
def stack(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(postgres_url, redis_url, tmp_path_factory.mktemp("stack"), **WEBHOOK_ENV) as built:
        yield built


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def finetune(stack: Stack, *args: str) -> Any:
    env = {**stack.env, "FT_API_URL": stack.url, "FT_API_KEY": stack.headers["Authorization"].split()[1]}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--json", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_worker_delivers_signed_events_and_retries_with_the_same_id(stack, dataset_id, receiver):
    receiver.answers = [500]  # the first request fails: the sweep sends the retry half a second later
    endpoint = finetune(stack, "webhooks", "create", receiver.url, "--event", "job.queued", "--event", "job.cancelled")
    assert endpoint["secret"].startswith("whsec_")
    assert [row["id"] for row in finetune(stack, "webhooks", "list")] == [endpoint["id"]]
    worker = stack.start_worker(queues="cpu")  # webhooks only: nothing trains the job
    with stack.client() as client:
        job = client.post("/v1/jobs", json=job_body(dataset_id)).json()
        received = receiver.wait_for(2)  # job.queued, failed once, then again
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    received = receiver.wait_for(3)
    verifier = Webhook(endpoint["secret"])
    events = [verifier.verify(request.body, request.headers) for request in received]
    assert [event["type"] for event in events] == ["job.queued", "job.queued", "job.cancelled"]
    assert received[0].headers["webhook-id"] == received[1].headers["webhook-id"] != received[2].headers["webhook-id"]
    assert events[2]["data"]["id"] == job["id"] and events[2]["data"]["status"] == "cancelled"

    deadline = time.monotonic() + 10
    while True:
        shown = finetune(stack, "webhooks", "deliveries", endpoint["id"])
        if all(row["status"] == "delivered" for row in shown) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(row["event_type"], [a["status_code"] for a in row["attempts"]]) for row in shown] == [
        ("job.cancelled", [200]),
        ("job.queued", [500, 200]),
    ]
    assert finetune(stack, "webhooks", "delete", endpoint["id"])["deleted"] is True
    stack.stop_worker(worker)
