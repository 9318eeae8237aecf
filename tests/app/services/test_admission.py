"""Admission and fair dispatch (app.dispatch.admission) on the real database and the real broker: per-project
limits answered with 429, and the order in which waiting jobs of competing projects reach the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import update

from app.db.models import Job, Project
from app.db.session import transaction
from app.dispatch import admission
from app.dispatch.broker import marker_client_name
from app.dispatch.names import GPU_QUEUE, TRAIN_JOB
from app.dispatch.sweep import sweep
from app.main import create_app
from app.settings import Settings
from app.statuses import JobStatus
from tests.app.factories import make_job
from tests.app.helpers import broker_messages, image_tree, job_body, ready_dataset, upload, zip_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"project_max_running_jobs": 1, "project_max_queued_jobs": 2})


@pytest.fixture
def app(limited: Settings) -> Iterator[FastAPI]:
    application = create_app(limited)
    yield application
    application.state.queue.close()
    application.state.engine.dispose()


def _sent(app: FastAPI) -> list[str]:
    messages = broker_messages(app, GPU_QUEUE)
    assert {m["task"] for m in messages} <= {TRAIN_JOB}
    return [m["args"][0] for m in messages]


def _finish(app: FastAPI, job_id: str) -> None:
    with transaction(app.state.session_factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))


def test_one_projects_backlog_does_not_starve_another(app: FastAPI) -> None:
    services = app.state.runtime
    with transaction(services.factory) as session:
        crowd = [make_job(session, project="crowd").id for _ in range(5)]
        single = make_job(session, project="single").id
    order = []
    for _ in range(6):  # one worker: each pass, the job it ran ends
        sweep(services)
        sent = _sent(app)
        order += sent
        for job_id in sent:
            _finish(app, job_id)
    # One in flight per project at a time: the single job goes second, not sixth.
    assert order == [crowd[0], single, *crowd[1:]]


def test_a_projects_own_limit_overrides_the_setting(app: FastAPI) -> None:
    services = app.state.runtime
    with transaction(services.factory) as session:
        jobs = [make_job(session, project="big").id for _ in range(3)]
        session.execute(update(Project).where(Project.name == "big").values(max_running_jobs=2))
    sweep(services)
    assert _sent(app) == jobs[:2]
    sweep(services)
    assert _sent(app) == []  # both still in flight


async def test_past_the_queued_limit_a_submission_is_refused_with_429(client, app, limited) -> None:
    dataset = await ready_dataset(client, app, limited)
    answers = [await client.post("/v1/jobs", json=job_body(dataset["id"])) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    error = answers[2].json()["error"]
    assert error["code"] == "quota_exceeded" and error["param"] == "queued_jobs"
    assert error["details"] == [{"param": "queued_jobs", "type": "quota_exceeded", "message": "limit 2, current 2"}]
    # The first went to the broker at once; the second waits for the project's one running slot.
    assert _sent(app) == [answers[0].json()["id"]]
    assert [a.json()["status"] for a in answers[:2]] == ["queued", "queued"]


async def test_past_the_storage_limit_an_upload_is_refused_with_429(client, app, limited) -> None:
    limited.project_max_stored_bytes = 10  # the app's own settings object
    answer = await upload(client, zip_bytes(image_tree()))
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["param"] == "stored_bytes"


def test_a_broker_that_came_back_empty_gets_its_tasks_again(app: FastAPI, limited: Settings) -> None:
    services = app.state.runtime
    if not limited.celery_broker_url.startswith("redis"):
        pytest.skip("the marker lives in Redis; the embedded broker is a folder that a restart keeps")
    with transaction(services.factory) as session:
        job_id = make_job(session, project="p").id
    sweep(services)  # the first sweep sets the marker (and finds nothing sent to forget)
    assert _sent(app) == [job_id]  # taken off the broker here: as a Redis restart would lose it
    assert sweep(services).redispatched == []  # in flight: nothing to send
    client = redis.Redis.from_url(limited.celery_broker_url)
    client.delete(f"{limited.broker_key_prefix}finetune:broker-marker")  # what an empty restart looks like
    client.close()
    report = sweep(services)
    assert report.resent == [job_id] and report.redispatched == [job_id]
    assert _sent(app) == [job_id]
    assert sweep(services).resent == []  # once


async def test_a_resumed_job_waits_for_its_projects_running_limit(client, app, limited) -> None:
    sweep(app.state.runtime)  # sets the broker's marker (a first sweep resends whatever was sent before it)
    dataset = await ready_dataset(client, app, limited)
    first, second = [(await client.post("/v1/jobs", json=job_body(dataset["id"]))).json()["id"] for _ in range(2)]
    assert _sent(app) == [first]  # the project's one running slot
    assert (await client.post(f"/v1/jobs/{second}/pause")).json()["status"] == "paused"
    resumed = await client.post(f"/v1/jobs/{second}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert _sent(app) == []  # not sent past the limit: it waits its turn, queued
    assert sweep(app.state.runtime).redispatched == []
    _finish(app, first)
    assert sweep(app.state.runtime).redispatched == [second]
    assert _sent(app) == [second]


async def test_a_resumed_job_is_sent_at_once_when_its_project_has_a_free_slot(client, app, limited) -> None:
    dataset = await ready_dataset(client, app, limited)
    job_id = (await client.post("/v1/jobs", json=job_body(dataset["id"]))).json()["id"]
    assert _sent(app) == [job_id]
    with transaction(app.state.session_factory) as session:  # as a worker that paused it leaves it
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.PAUSED, dispatched_at=None))
    assert (await client.post(f"/v1/jobs/{job_id}/resume")).json()["status"] == "queued"
    assert _sent(app) == [job_id]
    assert (await client.post(f"/v1/jobs/{job_id}/resume")).json()["status"] == "queued"  # a repeat: nothing more
    assert _sent(app) == []


def test_the_sweep_keeps_one_connection_for_the_broker_marker(app: FastAPI, limited: Settings) -> None:
    """Every pass asks the marker over the same Redis connection (it used to connect anew every 5 s); closing
    the queue lets it go."""
    services = app.state.runtime
    if not limited.celery_broker_url.startswith("redis"):
        pytest.skip("the marker lives in Redis")
    name = marker_client_name(limited.broker_key_prefix)
    observer = redis.Redis.from_url(limited.celery_broker_url)

    def marker_connections() -> list[str]:
        return sorted(str(entry["id"]) for entry in observer.client_list() if entry.get("name") == name)

    seen = []
    for _ in range(3):
        sweep(services)
        seen.append(marker_connections())
    assert len(seen[0]) == 1 and seen == [seen[0]] * 3, seen
    services.queue.close()
    deadline = time.monotonic() + 30
    while marker_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker_connections() == []
    observer.close()


async def test_a_create_does_not_wait_for_another_pass_which_then_sends_its_job(client, app, limited, monkeypatch):
    """A pass holds the dispatch turn and has already read the waiting jobs when a create commits: the create
    does not wait for that pass (it finds the turn taken and answers), and its job is not left behind: the
    holder, once it has let go, looks again and sends it (it is another project's: the second look covers all)."""
    services = app.state.runtime
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("SQLite takes one writer at a time (BEGIN IMMEDIATE): a create's pass never finds one running")
    dataset = await ready_dataset(client, app, limited)
    with transaction(services.factory) as session:
        first = make_job(session, project="first")
    read, go_on = threading.Event(), threading.Event()
    real_pass = admission.dispatch_pass

    def held_pass(session, queue, settings, *, project_id=None):  # the real pass, then held before its commit
        chosen = real_pass(session, queue, settings, project_id=project_id)
        if threading.current_thread() is holder:
            read.set()
            go_on.wait(120)
        return chosen

    monkeypatch.setattr(admission, "dispatch_pass", held_pass)
    passes: list[list[str]] = []
    holder = threading.Thread(
        target=lambda: passes.append(
            admission.dispatch_waiting(services.factory, services.queue, limited, project_id=first.project_id)
        )
    )
    holder.start()
    try:
        assert await anyio.to_thread.run_sync(read.wait, 60)
        with anyio.fail_after(60):  # a create that waited for the held pass would never answer: a hang, caught
            created = await client.post("/v1/jobs", json=job_body(dataset["id"]))
        assert created.status_code == 201, created.text
        late = created.json()["id"]
        with transaction(services.factory) as session:
            assert session.get(Job, late).dispatch_requested_at is None  # not sent yet: the turn was taken
    finally:
        go_on.set()
        await anyio.to_thread.run_sync(holder.join, 60)
    assert passes == [[first.id, late]]
    assert _sent(app) == [first.id, late]


def test_the_look_before_a_pass_counts_a_projects_own_limit(app: FastAPI, limited: Settings) -> None:
    """The read before a project's pass (no turn taken) compares with the project's own running limit, here
    above the setting's 1: a second job still goes at once, a third waits."""
    services = app.state.runtime
    sent = []
    for _ in range(3):
        with transaction(services.factory) as session:
            job = make_job(session, project="big")
            session.execute(update(Project).where(Project.id == job.project_id).values(max_running_jobs=2))
        sent.append(admission.dispatch_waiting(services.factory, services.queue, limited, project_id=job.project_id))
    assert [len(chosen) for chosen in sent] == [1, 1, 0]
    assert _sent(app) == [chosen[0] for chosen in sent[:2]]
