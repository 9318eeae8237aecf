"""Platform integration on the production stack (the API, real Celery workers, PostgreSQL and Redis):

- webhooks: a job's status changes reach a real receiver, signed and verified with the ``standardwebhooks``
  library unchanged; a receiver that fails first gets the same webhook-id again when the API's sweep sends
  the retry; the CLI creates, lists, shows the deliveries of and deletes an endpoint;
- the OpenAI-compatible surface, driven by the real ``openai`` SDK: upload, create, list with pagination,
  follow the events to the end, checkpoints, cancel, and the SDK's own errors for a 404 and a 422."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import openai
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
        [sys.executable, "-m", "cli", "--json", *args], cwd=REPO, env=env, capture_output=True, text=True
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


def _sdk(stack: Stack) -> openai.OpenAI:
    key = stack.headers["Authorization"].split()[1]
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)


def _until(check: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return found


SPEC = {
    "data": {"image_size": 16},
    "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
    "training": {"deterministic": True, "log_every_steps": 2},
}


def test_the_openai_sdk_uploads_trains_follows_and_cancels(stack, cifar):
    sdk = _sdk(stack)
    stack.start_worker(queues="cpu")
    with cifar[1].open("rb") as archive:
        uploaded = sdk.files.create(file=archive, purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.status == "uploaded" and uploaded.purpose == "fine-tune"

    def validated() -> Any:
        shown = sdk.files.retrieve(uploaded.id)
        return shown if shown.status != "uploaded" else None

    processed = _until(validated)
    assert processed.status == "processed", processed
    assert uploaded.id in [found.id for found in sdk.files.list()]

    stack.start_worker(queues="gpu")
    hyper = {"n_epochs": 2, "batch_size": 32, "learning_rate_multiplier": 2.0}
    job = sdk.fine_tuning.jobs.create(
        model="resnet18",
        training_file=uploaded.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        seed=0,
        suffix="sdk-run",
        metadata={"team": "vision"},
        extra_body={"spec": SPEC},
    )
    assert job.status == "queued" and job.model == "resnet18" and job.training_file == uploaded.id
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (2, 32)
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.04 / 0.01)  # 2 x the spec's 0.02
    doomed = sdk.fine_tuning.jobs.create(model="resnet18", training_file=uploaded.id, extra_body={"spec": SPEC})
    assert sdk.fine_tuning.jobs.cancel(doomed.id).status in ("cancelled", "running")  # running: still stopping
    _until(lambda: True if sdk.fine_tuning.jobs.retrieve(doomed.id).status == "cancelled" else None)

    first_page = sdk.fine_tuning.jobs.list(limit=1)
    assert [found.id for found in first_page.data] == [doomed.id] and first_page.has_more
    every = [found.id for found in sdk.fine_tuning.jobs.list(limit=1)]  # the SDK pages on, one job a page
    assert every[:2] == [doomed.id, job.id] and len(every) == len(set(every))  # then the module's earlier jobs
    assert [found.id for found in sdk.fine_tuning.jobs.list(metadata={"team": "vision"})] == [job.id]

    seen: dict[str, Any] = {}  # follow the events while it runs, as a client would, until the job ends

    def newest() -> Any:
        for event in sdk.fine_tuning.jobs.list_events(job.id, limit=5).data:
            seen.setdefault(event.id, event)
        done = sdk.fine_tuning.jobs.retrieve(job.id)
        return done if done.status in ("succeeded", "failed", "cancelled") else None

    finished = _until(newest)
    assert finished.status == "succeeded" and finished.fine_tuned_model == job.id, finished.error
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=7))  # every page, newest first
    assert set(seen) <= {event.id for event in events}
    assert events[0].message == "job succeeded" and events[-1].message == "job queued"
    epochs = [event.data["epoch"] for event in events if event.type == "metrics" and "val_loss" in event.data]
    assert sorted(epochs) == [1, 2]
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.metrics.step for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    assert len(checkpoints) == 2 and all(c.fine_tuning_job_id == job.id for c in checkpoints)

    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk.fine_tuning.jobs.create(
            model="resnet18", training_file=uploaded.id, extra_body={"spec": {"optimizer": {"lr": -1}}}
        )
    assert refused.value.body["param"].startswith("spec.optimizer")
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.fine_tuning.jobs.create(model="resnet18", training_file=uploaded.id, validation_file="ds_other")
