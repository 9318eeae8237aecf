"""The polled reads: ``GET /v1/jobs/{id}`` (what pipelines and the console poll) answered beside FastAPI's
machinery, and the job and the page of jobs both routes serialise (``read_job``, ``read_page``).

Under a polling load (``bench/api_bench.py --profile``) a profile of that route put most of its CPU outside
the service's own work: FastAPI's routing through the included routers (it walks every router on each request
to learn whether its routes changed), its dependency solving and exit stacks, and SQLAlchemy's ORM loading
the job with its metadata and artifacts. ``HotJobRead`` is a plain Starlette route placed first in the app's
router, inside the same middleware (request id, host allow-list, body limit, metrics) and the same error
handlers. It answers the common case only: a GET without a query string, from a caller this process
remembers (``app.api.callers.CallerCache``); any other request (no key, an unknown key, a query parameter)
it passes on to the route in ``app.api.jobs``, which authenticates and has the last word. Both read the job
with ``read_job`` (one Core statement, the stored spec left unread when this process holds it validated;
awaited on the event loop on PostgreSQL, ``app.db.async_reads``) and answer the same bytes, a missing job the
same 404 (``tests/app/api/test_hot_routes.py``). The answers are serialised from the jobs' fields
(``app.schemas.jobs.job_document``), not through the response models."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import anyio.to_thread
import orjson
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection, Engine
from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from app.api.callers import Caller, CallerCache
from app.api.responses import JSONBytesResponse
from app.clock import utcnow
from app.db.async_reads import AsyncReads, ReadUnavailable
from app.errors import NotFound
from app.repositories import jobs
from app.repositories.jobs import JobFilters
from app.schemas.jobs import CachedSpec, cached_spec, job_document, spec_of
from app.settings import Settings

PATH = "/v1/jobs/{job_id}"
_PATH = re.compile(r"^/v1/jobs/([^/]{1,64})$")  # the route's path, its id at most 64 characters as it takes
PASSED_ON = "finetune.hot_route_passed_on"  # in the scope of a request a hot route handed to the router again


def read_job(connection: Connection, project_id: str, job_id: str) -> bytes:
    """The project's job as the API shows it, as JSON; NotFound (404) if it has none of that id."""
    cached = cached_spec(job_id)
    return _shown(job_id, jobs.get_record(connection, project_id, job_id, with_spec=cached is None), cached)


async def read_job_on_loop(reads: AsyncReads, project_id: str, job_id: str) -> bytes:
    """``read_job`` on the event loop's pool; ReadUnavailable when that pool cannot answer."""
    cached = cached_spec(job_id)
    record = await jobs.get_record_on_loop(reads, project_id, job_id, with_spec=cached is None)
    return _shown(job_id, record, cached)


def _shown(job_id: str, record: jobs.JobRecord | None, cached: CachedSpec | None) -> bytes:
    if record is None:
        raise NotFound(f"no job {job_id}", param="job_id")
    if cached is None:
        assert record.spec is not None  # read with it
        cached = spec_of(record.id, record.spec)
    return orjson.dumps(job_document(record, orjson.Fragment(cached.json)))


def read_page(connection: Connection, project_id: str, filters: JobFilters, after: str | None, limit: int) -> bytes:
    """A page of the project's jobs as the API shows it (``GET /v1/jobs``), as JSON: one statement, and one
    more for the specs this process has not validated yet."""
    records, has_more = jobs.page_records(connection, project_id, filters, after=after, limit=limit)
    cached = {record.id: cached_spec(record.id) for record in records}
    missing = [job_id for job_id, spec in cached.items() if spec is None]
    return _listed(records, has_more, cached, jobs.stored_specs(connection, missing) if missing else {})


async def read_page_on_loop(
    reads: AsyncReads, project_id: str, filters: JobFilters, after: str | None, limit: int
) -> bytes:
    """``read_page`` on the event loop's pool; ReadUnavailable when that pool cannot answer."""
    records, has_more = await jobs.page_records_on_loop(reads, project_id, filters, after=after, limit=limit)
    cached = {record.id: cached_spec(record.id) for record in records}
    missing = [job_id for job_id, spec in cached.items() if spec is None]
    return _listed(records, has_more, cached, await jobs.stored_specs_on_loop(reads, missing) if missing else {})


def _listed(
    records: list[jobs.JobRecord],
    has_more: bool,
    cached: dict[str, CachedSpec | None],
    stored: dict[str, dict[str, Any]],
) -> bytes:
    """The page (``JobList``'s fields, in order); a job gone between the two statements (its project deleted
    meanwhile) is left out."""
    now = utcnow()
    shown = []
    for record in records:
        spec = cached[record.id] or (spec_of(record.id, stored[record.id]) if record.id in stored else None)
        if spec is not None:
            shown.append(job_document(record, orjson.Fragment(spec.json), now))
    return orjson.dumps(
        {
            "object": "list",
            "data": shown,
            "has_more": has_more,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None,
        }
    )


class HotJobRead(BaseRoute):
    """``GET /v1/jobs/{id}`` for a remembered caller; every other request to that path goes on to the router."""

    path = PATH  # the metrics' route label, as for the route in app.api.jobs

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"] or PASSED_ON in scope:
            return Match.NONE, {}
        found = _PATH.match(get_route_path(scope))  # as Starlette's routes match: less a --root-path
        if found is None:
            return Match.NONE, {}
        return Match.FULL, {"route": self, "path_params": {"job_id": found.group(1)}}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        settings: Settings = state.settings
        callers: CallerCache = state.callers
        caller = callers.caller(bearer(scope), settings.auth_required)
        if caller is None:  # authenticating (and its 401s) is the route's
            await pass_on(scope, receive, send)
            return
        job_id: str = scope["path_params"]["job_id"]
        on_loop: AsyncReads | None = state.async_reads
        job = None
        if on_loop is not None:
            with contextlib.suppress(ReadUnavailable):  # then through the engine, whose errors are the API's
                job = await read_job_on_loop(on_loop, caller.project_id, job_id)
        if job is None:
            reads: Engine = state.reads_engine
            slots: asyncio.Semaphore = state.db_slots
            async with slots:  # as every request's database work: see app.api.deps.get_session
                job = await anyio.to_thread.run_sync(_read, reads, caller, job_id)
        await JSONBytesResponse(job)(scope, receive, send)


def _read(reads: Engine, caller: Caller, job_id: str) -> bytes:
    with reads.connect() as connection:
        return read_job(connection, caller.project_id, job_id)


async def pass_on(scope: Scope, receive: Receive, send: Send) -> None:
    """The request to the app's router again, which this time skips the hot routes."""
    scope[PASSED_ON] = True
    await scope["router"](scope, receive, send)


def bearer(scope: Scope) -> str | None:
    """The bearer token as ``fastapi.security.HTTPBearer`` reads it (None where it finds none)."""
    scheme, credentials = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
    return credentials if scheme.lower() == "bearer" and credentials else None


def install_hot_reads(routes: list[Any]) -> None:
    """Put the hot routes first in the app's router (``app.router.routes``)."""
    routes.insert(0, HotJobRead())
