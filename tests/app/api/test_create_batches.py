"""Concurrent submissions written in one transaction (``app.api.create_batches``): each request still gets its
own job or its own error, and the jobs, their first events, their webhook deliveries and the project's limits
are what one submission at a time would have left."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.api import create_batches
from app.db.models import Job, JobEvent, WebhookDelivery
from app.db.session import transaction
from app.ids import new_id
from app.services import jobs as job_service
from app.settings import Settings
from app.statuses import JobStatus
from tests.app.api.test_integrations import MLFLOW
from tests.app.factories import make_ready_dataset
from tests.app.helpers import job_body, ready_dataset
from tests.app.webhooks.receiver import running_receiver

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The webhook receiver listens on 127.0.0.1: allowlisted."""
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


@pytest.fixture
def batches(app, monkeypatch) -> Iterator[list[int]]:
    """The size of each batch written; the first is held until ``held`` requests wait behind it, so that those
    go together in the second (one writer: ``WRITERS`` 1 here)."""
    sizes: list[int] = []
    monkeypatch.setattr(create_batches, "WRITERS", 1)
    write = job_service.create_jobs

    def counted(session, queue, settings, requests):
        sizes.append(len(requests))
        return write(session, queue, settings, requests)

    monkeypatch.setattr(job_service, "create_jobs", counted)
    yield sizes


def _hold_next_write(batcher: create_batches.CreateBatches) -> threading.Event:
    """The next batch's writing held until the event is set (30 s at most); the batches after it go as usual."""
    release = threading.Event()
    write = batcher._write

    def held(batch):
        batcher._write = write  # type: ignore[method-assign]
        release.wait(30)
        return write(batch)

    batcher._write = held  # type: ignore[method-assign]
    return release


async def _together(client: httpx.AsyncClient, app, bodies: list[dict]) -> list[httpx.Response]:
    """The bodies submitted at once, behind a first submission whose batch is held until all of them wait: they
    are written as one batch."""
    batcher: create_batches.CreateBatches = app.state.create_batches
    release = _hold_next_write(batcher)
    first = asyncio.create_task(client.post("/v1/jobs", json=bodies[0]))
    while not batcher.writers:
        await asyncio.sleep(0.01)
    rest = [asyncio.create_task(client.post("/v1/jobs", json=body)) for body in bodies[1:]]
    while len(batcher.waiting) + sum(task.done() for task in rest) < len(rest):  # a 422 never waits
        await asyncio.sleep(0.01)
    release.set()
    return [await first, *[await task for task in rest]]


async def test_submissions_arriving_together_are_one_transaction_each_answered_with_its_own_job(
    client, app, settings, batches
):
    dataset = await ready_dataset(client, app, settings)
    bodies = [{**job_body(dataset["id"]), "name": f"run-{i}", "metadata": {"i": str(i)}} for i in range(12)]
    bodies[3] = job_body(new_id("dataset"))  # a data set this project does not have
    bodies[7] = {**job_body(dataset["id"]), "integrations": [MLFLOW]}  # this server has no MLflow
    answers = await _together(client, app, bodies)

    assert batches == [1, 11]
    assert answers[3].status_code == 404 and answers[3].json()["error"]["code"] == "dataset_not_found"
    assert answers[7].status_code == 422 and answers[7].json()["error"]["code"] == "integration_unavailable"
    created = [answer.json() for i, answer in enumerate(answers) if i not in (3, 7)]
    assert all(answer.status_code == 201 for i, answer in enumerate(answers) if i not in (3, 7))
    assert [job["name"] for job in created] == [f"run-{i}" for i in range(12) if i not in (3, 7)]
    assert [job["metadata"] for job in created] == [{"i": str(i)} for i in range(12) if i not in (3, 7)]
    assert len({job["id"] for job in created}) == 10
    for job in created:  # the answer is the job as it reads back
        shown = await client.get(f"/v1/jobs/{job['id']}")
        assert shown.json() == {**job, "progress": shown.json()["progress"]}
        assert job["status"] == JobStatus.QUEUED
    with transaction(app.state.session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 10
        rows = session.scalars(select(JobEvent).order_by(JobEvent.job_id)).all()
        assert sorted(row.job_id for row in rows) == sorted(job["id"] for job in created)
        assert {(row.seq, row.type, row.message) for row in rows} == {(1, "status", "job queued")}
        assert set(session.scalars(select(Job.event_seq))) == {1}

    cancelled = await client.post(f"/v1/jobs/{created[0]['id']}/cancel")  # the next event follows the first
    assert cancelled.status_code == 200, cancelled.text
    events = (await client.get(f"/v1/jobs/{created[0]['id']}/events")).json()["data"]
    assert [event["seq"] for event in events] == [1, 2]


async def test_a_batch_admits_no_more_than_the_projects_queued_limit(client, app, settings, batches):
    settings.project_max_queued_jobs = 5
    dataset = await ready_dataset(client, app, settings)
    answers = await _together(client, app, [job_body(dataset["id"]) for _ in range(9)])

    assert batches == [1, 8]
    assert [answer.status_code for answer in answers] == [201] * 5 + [429] * 4
    refused = answers[-1].json()["error"]
    assert refused["code"] == "quota_exceeded" and refused["param"] == "queued_jobs"
    with transaction(app.state.session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 5


async def test_every_job_of_a_batch_gets_its_webhook_delivery(client, app, settings, batches):
    dataset = await ready_dataset(client, app, settings)
    with running_receiver() as receiver:
        body = {"url": receiver.url, "events": ["job.queued"]}
        assert (await client.post("/v1/webhooks", json=body)).status_code == 201
        answers = await _together(client, app, [job_body(dataset["id"]) for _ in range(6)])
    assert [answer.status_code for answer in answers] == [201] * 6
    with transaction(app.state.session_factory) as session:
        delivered = session.scalars(select(WebhookDelivery.job_id)).all()
    assert sorted(delivered) == sorted(answer.json()["id"] for answer in answers)


async def test_a_batch_that_fails_is_written_again_one_submission_at_a_time(
    client, app, settings, batches, monkeypatch
):
    """A submission that breaks its batch's transaction (here a constraint the checks did not foresee) fails
    alone: the others are written again, each in a transaction of its own."""
    dataset = await ready_dataset(client, app, settings)
    insert = job_service.insert_all

    def refusing(session, rows):
        if any(isinstance(row, Job) and row.name == "poison" for row in rows):
            raise IntegrityError("INSERT INTO jobs", {}, Exception("a constraint"))
        insert(session, rows)

    monkeypatch.setattr(job_service, "insert_all", refusing)
    bodies = [{**job_body(dataset["id"]), "name": "poison" if i == 2 else f"run-{i}"} for i in range(5)]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://finetune.test") as unraised:
        answers = await _together(unraised, app, bodies)

    assert batches == [1, 4, 1, 1, 1, 1]  # the batch of four, then each alone
    assert [answer.status_code for answer in answers] == [201, 201, 500, 201, 201]
    with transaction(app.state.session_factory) as session:
        names = set(session.scalars(select(Job.name)))
    assert names == {"run-0", "run-1", "run-3", "run-4"}


def _alphas_dataset(app) -> dict[str, str]:
    with transaction(app.state.session_factory) as session:
        return {"id": make_ready_dataset(session, project="alpha", per_class={"cat": 4, "dog": 4}).id}


@pytest.fixture
def passed_on(monkeypatch) -> list[str]:
    """The submissions the hot route handed to FastAPI's route: the reason each time (its request's body)."""
    handed: list[str] = []
    hand = create_batches.pass_on

    async def counted(scope, receive, send):
        handed.append(scope["method"])
        await hand(scope, receive, send)

    monkeypatch.setattr(create_batches, "pass_on", counted)
    return handed


async def test_a_remembered_callers_submission_is_answered_beside_fastapi_as_the_route_answers(
    client, app, settings, keys, passed_on
):
    dataset = _alphas_dataset(app)
    body = {**job_body(dataset["id"]), "name": "first", "metadata": {"team": "vision"}}
    routed = await client.post("/v1/jobs", json=body, headers=keys["alpha"])  # remembered from here on
    assert passed_on == ["POST"] and routed.status_code == 201, routed.text
    hot = await client.post("/v1/jobs", json={**body, "name": "second"}, headers=keys["alpha"])
    assert passed_on == ["POST"] and hot.status_code == 201, hot.text

    def comparable(response: httpx.Response) -> dict:
        job = {key: value for key, value in response.json().items() if key not in ("id", "name") and key[-3:] != "_at"}
        headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
        return {"headers": headers, "job": job}

    assert comparable(hot) == comparable(routed)
    assert (await client.get(f"/v1/jobs/{hot.json()['id']}", headers=keys["alpha"])).json() == hot.json()


async def test_what_the_hot_submission_does_not_take_goes_to_the_route_with_its_body(
    client, app, settings, keys, passed_on
):
    """Each answer is the route's (FastAPI's 422s, the key's 401, the Idempotency-Key's replay): the hot route
    passes the request on, with the body it read."""
    dataset = _alphas_dataset(app)
    alpha = keys["alpha"]
    assert (await client.post("/v1/jobs", json=job_body(dataset["id"]), headers=alpha)).status_code == 201
    handed = len(passed_on)
    bad_epochs = job_body(dataset["id"], training={"epochs": 0})
    cases = [
        (await client.post("/v1/jobs", json=bad_epochs, headers=alpha), 422, "spec.training.epochs"),
        (await client.post("/v1/jobs", json={**bad_epochs, "colour": 1}, headers=alpha), 422, None),
        (await client.post("/v1/jobs", content=b'{"spec": ', headers={**alpha, **JSON}), 400, "not valid JSON"),
        (await client.post("/v1/jobs", content=b"{}", headers=alpha), 422, None),  # no Content-Type
        (await client.post("/v1/jobs", content=b"\xff\xfe", headers={**alpha, **JSON}), 400, None),
        (await client.post("/v1/jobs", content=b"", headers={**alpha, **JSON}), 422, None),
        (await client.post("/v1/jobs", content=b"{}", headers={**alpha, "content-type": "text/plain"}), 422, None),
        (
            await client.post("/v1/jobs", json=job_body(dataset["id"]), headers={"Authorization": "Bearer no"}),
            401,
            None,
        ),
    ]
    for response, status, param in cases:
        assert response.status_code == status, (cases.index((response, status, param)), response.text)
        if param is not None:
            assert param in response.text
    keyed = {**alpha, "Idempotency-Key": "run-7"}
    first = await client.post("/v1/jobs", json=job_body(dataset["id"]), headers=keyed)
    again = await client.post("/v1/jobs", json=job_body(dataset["id"]), headers=keyed)
    assert first.status_code == again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert len(passed_on) == handed + len(cases) + 2


async def test_a_submission_whose_client_left_before_its_batch_began_is_not_written(client, app, settings, batches):
    dataset = await ready_dataset(client, app, settings)
    batcher: create_batches.CreateBatches = app.state.create_batches
    release = _hold_next_write(batcher)
    first = asyncio.create_task(client.post("/v1/jobs", json={**job_body(dataset["id"]), "name": "kept"}))
    while not batcher.writers:
        await asyncio.sleep(0.01)
    gone = asyncio.create_task(client.post("/v1/jobs", json={**job_body(dataset["id"]), "name": "gone"}))
    while not batcher.waiting:
        await asyncio.sleep(0.01)
    gone.cancel()  # as uvicorn cancels a request whose client disconnected
    release.set()
    assert (await first).status_code == 201
    with pytest.raises(asyncio.CancelledError):
        await gone
    while batcher.writers:
        await asyncio.sleep(0.01)
    with transaction(app.state.session_factory) as session:
        assert list(session.scalars(select(Job.name))) == ["kept"]
    assert batches == [1]


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_a_submission_arriving_as_the_writer_leaves_starts_a_writer(client, app, keys, monkeypatch):
    """The moment between a writer's last look at the queue (nothing waiting) and its task's end: a request that
    arrives then must start a writer, or it waits forever (it did). Called on the ASGI app directly, whose
    ``send`` here never yields to the loop, on uvloop (as uvicorn serves), each submission comes in that
    moment."""
    monkeypatch.setattr(create_batches, "WRITERS", 1)
    body = json.dumps(job_body(_alphas_dataset(app)["id"])).encode()
    authorization = keys["alpha"]["Authorization"].encode()

    async def submit() -> list[int]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/jobs", "raw_path": b"/v1/jobs", "root_path": "", "query_string": b"",
            "headers": [(b"host", b"t"), (b"content-type", b"application/json"), (b"authorization", authorization)],
            "client": ("127.0.0.1", 1), "server": ("finetune.test", 80),
        }  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses

    async def one_after_another() -> list[list[int]]:  # in one task: the next comes in the turn the last ended
        return [await submit() for _ in range(5)]

    assert await asyncio.wait_for(one_after_another(), 30) == [[201]] * 5
