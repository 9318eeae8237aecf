"""The polled routes' database work: ``GET /v1/jobs/{id}`` with a remembered key is one statement, run outside
a transaction on PostgreSQL (no BEGIN and COMMIT round trips) and under a deferred BEGIN on SQLite (no write
lock); its body is the job as the list and the submission show it."""

from __future__ import annotations

import pytest
from sqlalchemy import event

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
        assert [statement for statement, _ in seen] == ["BEGIN", "SELECT"]  # deferred: not BEGIN IMMEDIATE
    body = read.json()
    listed = (await client.get("/v1/jobs")).json()["data"]
    assert body == listed[0] | {"progress": body["progress"]}
    assert {key: value for key, value in body.items() if key not in ("progress", "updated_at")} == {
        key: value for key, value in job.items() if key not in ("progress", "updated_at")
    }
