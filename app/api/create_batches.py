"""Job submissions that arrive together, written together.

A ``POST /v1/jobs`` without an Idempotency-Key joins its process's next batch: one transaction checks and
writes every job in it (``app.services.jobs.create_jobs``), each request answered with its own job or its
own error. The batch shares what a create costs besides its own row: the transaction and its commit, the
project's admission read, the data set's row and lock, the flush, the webhook subscriptions and the dispatch
look after the commit. On the bench machine a round trip to PostgreSQL costs about 0.1 ms of CPU in system
calls alone and a create made eleven: under 32 concurrent clients one API process served 85 creates a second
one at a time, and serves about 400 in batches (``bench/api_bench.py``, the README's measured section).

``HotJobCreate`` takes the common submission (a remembered caller, a JSON body the model accepts, no query
string, no Idempotency-Key) beside FastAPI's routing and dependency solving, which were a fifth of a batched
create's CPU; any other request, a body the model refuses included, goes on to the route in ``app.api.jobs``,
which has the last word (its 401s, its 422s) and joins the same batches.

A request that finds the writer idle is written at once, a batch of one; what arrives while a batch is being
written waits for it, and then goes in the next (at most ``MAX_BATCH``; ``WRITERS`` batches at once). A
request with an Idempotency-Key goes alone (``app.services.jobs.create_job``): its key is claimed first,
and a racing twin waits for that claim's commit, which must not hold up the other requests of a batch."""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette._utils import get_route_path
from starlette.datastructures import Headers, State
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from app.api.callers import CallerCache
from app.api.hot_reads import PASSED_ON, bearer, pass_on
from app.api.responses import JSONBytesResponse
from app.db.models import Job
from app.db.session import transaction
from app.errors import ServiceUnavailable
from app.schemas.jobs import JobCreate, job_document, spec_of
from app.services import jobs

log = logging.getLogger(__name__)

# Batches in flight at once a process: with two, under wrk, the batches were smaller and a create cost 2.3 ms of
# CPU against 1.55 ms with one. One slow batch (a lock wait) holds the others up, within the statement timeout.
WRITERS = 1
MAX_BATCH = 64


@dataclass(frozen=True)
class _Submission:
    project_id: str
    request: JobCreate
    answer: asyncio.Future[bytes]


class CreateBatches:
    """The process's job submissions, batched; ``create`` answers with the new job's JSON (what ``GET
    /v1/jobs/{id}`` shows) or raises the request's own error."""

    def __init__(self, state: State) -> None:
        self.state = state  # the app's: its session factory, broker, settings and database places at write time
        self.waiting: list[_Submission] = []
        self.writers: set[asyncio.Task[None]] = set()
        # Counted down when a writer's task is done, not when its loop ends: a request that comes in between
        # sees the writer still counted, and the writer's end starts another for it (``_writer_done``).
        self.writing = 0

    async def create(self, project_id: str, request: JobCreate) -> bytes:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Submission(project_id, request, answer))
        if self.writing < WRITERS:
            self._start_writer()
        # A request cancelled here (its client gone) is not written if its batch has not begun; once it has,
        # its job is written all the same, as a create that reached its transaction always was.
        return await answer

    def _start_writer(self) -> None:
        self.writing += 1
        writer = asyncio.create_task(self._write_waiting())
        self.writers.add(writer)  # a reference, so that the task is not collected while it runs
        writer.add_done_callback(self._writer_done)

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        self.writers.discard(writer)
        if not writer.cancelled() and writer.exception() is not None:  # never expected: _write answers errors
            log.error("a job submission writer failed", exc_info=writer.exception())
        self.writing -= 1
        if self.waiting and self.writing < WRITERS and not writer.cancelled():  # arrived as it left (or it failed)
            self._start_writer()

    async def _write_waiting(self) -> None:
        while self.waiting:
            async with self.state.db_slots:  # as every request's database work (app.api.deps)
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                batch = [item for item in batch if not item.answer.done()]  # its client gone before its batch
                if not batch:
                    continue
                try:
                    answers = await run_in_threadpool(self._write, batch)  # runs to its end even if cancelled
                except asyncio.CancelledError:  # the loop is closing: no request may wait forever
                    stopped = "the server stopped while writing this job: list your jobs before submitting it again"
                    _answer(batch, [ServiceUnavailable(stopped) for _ in batch])
                    raise
            _answer(batch, answers)

    def _write(self, batch: list[_Submission]) -> list[bytes | Exception]:
        try:
            return self._write_together(batch)
        except OperationalError as error:  # the database: each alone would meet it again
            return [error] * len(batch)
        except Exception as error:
            if len(batch) == 1:
                return [error]
            log.exception("a batch of %d job submissions failed; writing each alone", len(batch))
        return [answer for submission in batch for answer in self._write_alone(submission)]

    def _write_alone(self, submission: _Submission) -> list[bytes | Exception]:
        try:
            return self._write_together([submission])
        except Exception as error:
            return [error]

    def _write_together(self, batch: list[_Submission]) -> list[bytes | Exception]:
        state = self.state
        with transaction(state.session_factory) as session:
            made = jobs.create_jobs(
                session, state.queue, state.settings, [(item.project_id, item.request) for item in batch]
            )
        return [_shown(job) if isinstance(job, Job) else job for job in made]


def _shown(job: Job) -> bytes:
    """The new job as the API shows it (its spec validated once and remembered for the reads that follow)."""
    return orjson.dumps(job_document(job, orjson.Fragment(spec_of(job.id, job.spec).json)))


def _answer(batch: list[_Submission], answers: list[bytes | Exception]) -> None:
    for item, answer in zip(batch, answers, strict=True):
        if item.answer.done():  # its request was cancelled
            continue
        if isinstance(answer, bytes):
            item.answer.set_result(answer)
        else:
            item.answer.set_exception(answer)


class HotJobCreate(BaseRoute):
    """``POST /v1/jobs`` as its route in ``app.api.jobs`` answers it, for the common submission; every other
    request to that path goes on to the router."""

    path = "/v1/jobs"  # the metrics' route label, as for the route in app.api.jobs

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"] or PASSED_ON in scope:
            return Match.NONE, {}
        if get_route_path(scope) != self.path:  # as Starlette's routes match: less a --root-path
            return Match.NONE, {}
        return Match.FULL, {"route": self}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        callers: CallerCache = state.callers
        caller = callers.caller(bearer(scope), state.settings.auth_required)
        headers = Headers(scope=scope)
        if caller is None or "idempotency-key" in headers or not _json(headers.get("content-type")):
            await pass_on(scope, receive, send)
            return
        body = await _body(receive)
        try:  # as FastAPI reads a JSON body: the standard library's parser, then the model
            request = JobCreate.model_validate(json.loads(body)) if body else None
        except (ValueError, ValidationError):  # a JSONDecodeError, bytes that are not text: the route's 422
            request = None
        if request is None:
            await pass_on(scope, _replaying(body, receive), send)
            return
        batches: CreateBatches = state.create_batches
        answer = await batches.create(caller.project_id, request)
        await JSONBytesResponse(answer, status_code=201)(scope, receive, send)


def _json(content_type: str | None) -> bool:
    """A JSON media type, as FastAPI tells one (``application/json``, ``application/*+json``, parameters
    aside); without a Content-Type FastAPI parses JSON too, but that is rare enough to leave to it."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was read already: that body first, then what comes."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def install_hot_create(routes: list[Any]) -> None:
    """Put the hot submission route first in the app's router (``app.router.routes``)."""
    routes.insert(0, HotJobCreate())
