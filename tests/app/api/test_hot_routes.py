"""The polled routes' database work: ``GET /v1/jobs/{id}`` with a remembered key is one statement, run outside
a transaction (no BEGIN and COMMIT round trips, no write lock on SQLite); its body is the job as the list and
the submission show it."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import orjson
import pytest
from sqlalchemy import event, text

from app.api import hot_reads
from app.api import jobs as jobs_routes
from app.clock import utcnow
from app.db.async_reads import APPLICATION_NAME
from app.db.models import Artifact, JobMetadata
from app.db.models import Job as JobRow
from app.db.session import transaction
from app.ids import new_id
from app.repositories import jobs as jobs_repository
from app.schemas.jobs import Job, job_document, spec_of
from tests.app.factories import make_job
from tests.app.helpers import job_body, ready_dataset

pytestmark = pytest.mark.anyio


async def test_reading_a_job_is_one_statement_without_a_write_transaction(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    created = await client.post("/v1/jobs", json=job_body(dataset["id"]))
    assert created.status_code == 201, created.text
    job = created.json()
    assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200  # the caller is remembered now
    seen: list[tuple[str, bool | None]] = []

    def record(conn, _cursor, statement, _parameters, _context, _many) -> None:
        seen.append((statement.split()[0].upper(), getattr(conn.connection.dbapi_connection, "autocommit", None)))

    event.listen(app.state.engine, "before_cursor_execute", record)
    try:
        read = await client.get(f"/v1/jobs/{job['id']}")
    finally:
        event.remove(app.state.engine, "before_cursor_execute", record)
    assert read.status_code == 200 and read.headers["content-type"] == "application/json"
    if app.state.engine.dialect.name == "postgresql":
        assert seen == [("SELECT", True)]  # autocommit: psycopg sends no BEGIN, the session's end no COMMIT
    else:
        assert [statement for statement, _ in seen] == ["SELECT"]  # no BEGIN (IMMEDIATE would take the write lock)
    body = read.json()
    listed = (await client.get("/v1/jobs")).json()["data"]
    assert body == listed[0] | {"progress": body["progress"]}
    assert {key: value for key, value in body.items() if key not in ("progress", "updated_at")} == {
        key: value for key, value in job.items() if key not in ("progress", "updated_at")
    }


def jobs_in_every_shape(app) -> list[str]:
    """Queued; running, with an ETA; succeeded, with artifacts, metadata and an integration; failed."""
    now = utcnow()
    ids = []
    with transaction(app.state.session_factory) as session:
        for shape in ("queued", "running", "succeeded", "failed"):
            job = make_job(session, project="alpha")
            ids.append(job.id)
            if shape == "running":
                job.status, job.attempt, job.epochs_completed = "running", 1, 1
                job.started_at = job.attempt_started_at = now - timedelta(seconds=90)
                job.latest_metrics = {"epoch": 1, "val_acc": 0.5, "epoch_seconds": 80.0}
            elif shape == "succeeded":
                job.status, job.attempt, job.epochs_completed = "succeeded", 1, 3
                job.name, job.finished_at = "cats ✓", now
                job.best_metrics = {"epoch": 2, "val_acc": 0.9}
                job.final_metrics = job.test_metrics = {"val_acc": 0.9, "nested": {"per_class": [0.8, 1.0]}}
                job.integrations = [{"type": "mlflow", "mlflow": {"experiment": "e", "run_name": None, "tags": {}}}]
                for key, value in {"team": "vision", "run": "7"}.items():
                    session.add(JobMetadata(job_id=job.id, key=key, value=value))
                for name in ("model.safetensors", "card.md"):
                    artifact = Artifact(id=new_id("artifact"), job_id=job.id, name=name, store_key=name, bytes=1)
                    session.add(artifact)
                    artifact.sha256 = "0" * 64
            elif shape == "failed":
                job.status, job.error_code, job.error_message = "failed", "non_finite_loss", "loss was nan"
    return ids


async def routed(app, client, path: str, headers: dict[str, str]) -> httpx.Response:
    """The answer of the route in app.api.jobs: a caller the process does not remember is passed on to it."""
    app.state.callers._entries.clear()
    return await client.get(path, headers=headers)


def comparable(response: httpx.Response) -> dict:
    """Status, headers and body, less what differs between two answers: the request id, and the ETA's
    last seconds (and with it the length) of a running job."""
    body = response.json()
    if response.status_code != 200:
        body["error"].pop("request_id", None)
    elif body["progress"]["eta_seconds"] is not None:
        body["progress"]["eta_seconds"] = round(body["progress"]["eta_seconds"], -1)
    assert int(response.headers["content-length"]) == len(response.content)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
    return {"status": response.status_code, "headers": headers, "body": body}


def comparable_page(response: httpx.Response) -> dict:
    """A page's status and body, less the ETAs' last seconds."""
    page = response.json()
    for job in page["data"]:
        if job["progress"]["eta_seconds"] is not None:
            job["progress"]["eta_seconds"] = round(job["progress"]["eta_seconds"], -1)
    return {"status": response.status_code, "page": page}


async def test_the_hot_route_answers_as_the_route_does(app, client, keys, monkeypatch):
    """Every shape of job, a missing one, another project's: the same status, headers and body either way."""
    answered: list[str] = []
    read = hot_reads._read
    monkeypatch.setattr(hot_reads, "_read", lambda *args: answered.append(args[2]) or read(*args))
    ids = jobs_in_every_shape(app)
    for job_id in [*ids, "ftjob_01J0000000000000000000000", "x" * 64]:
        path = f"/v1/jobs/{job_id}"
        expected = comparable(await routed(app, client, path, keys["alpha"]))
        assert comparable(await client.get(path, headers=keys["alpha"])) == expected  # the caller is remembered
        assert answered[-1] == job_id  # and the hot route answered
    shown = (await client.get(f"/v1/jobs/{ids[2]}", headers=keys["alpha"])).json()
    assert shown["metadata"] == {"run": "7", "team": "vision"} and shown["result_artifacts"] == [
        "card.md",
        "model.safetensors",
    ]
    await client.get("/v1/jobs", headers=keys["beta"])  # remembered: the hot route answers its requests
    for job_id in ids:
        assert (await client.get(f"/v1/jobs/{job_id}", headers=keys["beta"])).status_code == 404
        assert answered[-1] == job_id


async def test_what_the_hot_route_does_not_answer_goes_to_the_route(app, client, keys, monkeypatch):
    """No key, a wrong key, a query string, a HEAD, a longer id: the route's answers, the hot route not called."""
    answered: list[str] = []
    monkeypatch.setattr(hot_reads, "_read", lambda *args: answered.append(args[2]))
    job_id = jobs_in_every_shape(app)[0]
    await client.get("/v1/jobs", headers=keys["alpha"])  # the key is remembered
    path = f"/v1/jobs/{job_id}"
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Bearer ftk_wrong"})).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})).status_code == 401
    unknown = await client.get(path, params={"expand": "all"}, headers=keys["alpha"])
    assert unknown.status_code == 422 and "expand" in unknown.json()["error"]["message"]
    assert (await client.get(f"/v1/jobs/{'x' * 65}", headers=keys["alpha"])).status_code == 422
    head = await client.head(path, headers=keys["alpha"])
    assert head.status_code == 405 and head.headers["allow"] == "GET"  # as before the hot route
    assert answered == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_on_postgresql_it_reads_on_the_event_loop_and_outlives_its_connections(app, client, keys, monkeypatch):
    """Served with its lifespan, the hot route reads on the event loop's own pool, and answers as the route
    does; with that pool's connections killed by the server, the next read goes through the engine and
    answers all the same, and the pool reconnects for the reads after it."""
    on_loop: list[str] = []
    in_thread: list[str] = []
    read_on_loop, read = hot_reads.read_job_on_loop, hot_reads._read

    async def spied_on_loop(reads, project_id, job_id):
        job = await read_on_loop(reads, project_id, job_id)
        on_loop.append(job_id)
        return job

    monkeypatch.setattr(hot_reads, "read_job_on_loop", spied_on_loop)
    monkeypatch.setattr(hot_reads, "_read", lambda *args: in_thread.append(args[2]) or read(*args))
    ids = jobs_in_every_shape(app)
    async with app.router.lifespan_context(app):
        await app.state.async_reads.pool.wait(timeout=10)
        for job_id in ids:
            expected = comparable(await routed(app, client, f"/v1/jobs/{job_id}", keys["alpha"]))
            assert comparable(await client.get(f"/v1/jobs/{job_id}", headers=keys["alpha"])) == expected
        assert on_loop == ids and in_thread == []
        pages_on_loop: list[int] = []
        read_page_on_loop = jobs_routes.read_page_on_loop

        async def spied_page(*args):
            page = await read_page_on_loop(*args)
            pages_on_loop.append(len(orjson.loads(page)["data"]))
            return page

        monkeypatch.setattr(jobs_routes, "read_page_on_loop", spied_page)
        queries = [{}, {"limit": 2}, {"status": ["succeeded", "failed"]}, {"metadata[team]": "vision"}]
        queries += [{"created_after": 0, "created_before": 253_402_300_799}, {"after": ids[-1], "dataset": "ds_none"}]
        for query in queries:
            listed = await client.get("/v1/jobs", params=query, headers=keys["alpha"])
            pool, app.state.async_reads = app.state.async_reads, None  # the same request through the engine
            assert comparable_page(listed) == comparable_page(
                await client.get("/v1/jobs", params=query, headers=keys["alpha"])
            )
            app.state.async_reads = pool
        assert pages_on_loop == [4, 2, 2, 1, 4, 0]
        with app.state.engine.connect() as connection:
            killed = connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": APPLICATION_NAME},
            ).all()
        assert killed and all(row[0] for row in killed)
        lost = await client.get(f"/v1/jobs/{ids[2]}", headers=keys["alpha"])
        assert lost.status_code == 200 and lost.json()["metadata"] == {"run": "7", "team": "vision"}
        assert in_thread == [ids[2]]  # read through the engine
        scraped = (await client.get("/metrics")).text
        assert 'finetune_api_loop_reads_unavailable_total{reason="error"} 1.0' in scraped
        deadline = time.monotonic() + 10
        while on_loop[-1:] != [ids[3]] and time.monotonic() < deadline:
            assert (await client.get(f"/v1/jobs/{ids[3]}", headers=keys["alpha"])).status_code == 200
            await asyncio.sleep(0.05)
        assert on_loop[-1] == ids[3]  # on the loop again
    assert app.state.async_reads.pool.closed


def test_a_jobs_document_is_its_models_json_byte_for_byte(app):
    """``job_document`` (what the polled reads serialise) against ``Job.from_row`` (the model the OpenAPI
    schema shows), for every shape of job, read by the ORM and as a record, with metrics of awkward numbers."""
    ids = jobs_in_every_shape(app)
    now = utcnow()
    with transaction(app.state.session_factory) as session:
        job = session.get(JobRow, ids[1])
        metrics = {"epoch": 1, "epoch_seconds": 80.0, "tiny": 1e-7, "big": 1e16, "sum": 0.1 + 0.2}
        job.latest_metrics = metrics | {
            "zero": -0.0,
            "int": 2**53,
            "text": 'é ✓ "quoted" \\ \n',
            "list": [1, 2.5, None],
        }
    with transaction(app.state.session_factory) as session:
        for job_id in ids:
            row = session.get(JobRow, job_id)
            record = jobs_repository.get_record(session.connection(), row.project_id, job_id, with_spec=True)
            spec = spec_of(job_id, row.spec)
            expected = Job.from_row(row, now).model_dump_json(by_alias=True).encode()
            for read in (row, record):
                assert orjson.dumps(job_document(read, orjson.Fragment(spec.json), now)) == expected


async def test_behind_a_root_path_the_hot_route_still_answers(app, keys, monkeypatch):
    """Served under a prefix (uvicorn --root-path /api, a proxy's path), the path it matches is the route's."""
    answered: list[str] = []
    read = hot_reads._read
    monkeypatch.setattr(hot_reads, "_read", lambda *args: answered.append(args[2]) or read(*args))
    job_id = jobs_in_every_shape(app)[0]
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://finetune.test", headers=keys["alpha"]) as http:
        assert (await http.get("/api/v1/jobs")).status_code == 200  # the key is remembered
        shown = await http.get(f"/api/v1/jobs/{job_id}")
    assert shown.status_code == 200 and shown.json()["id"] == job_id and answered == [job_id]
