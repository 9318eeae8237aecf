"""Job submissions that arrive together, written together.

A ``POST /v1/jobs`` without an Idempotency-Key joins its process's next batch: one transaction checks and
writes every job in it (``app.services.jobs.create_jobs``), each request answered with its own job or its
own error. The batch shares what a create costs besides its own row: the transaction and its commit, the
project's admission read, the data set's row and lock, the flush, the webhook subscriptions and the dispatch
look after the commit. On the bench machine a round trip to PostgreSQL costs about 0.1 ms of CPU in system
calls alone and a create made eleven; under 32 concurrent clients one API process served 50 creates a
second, a tenth of what its reads serve (``bench/api_bench.py``).

A lone request is a batch of one and waits for nothing. ``WRITERS`` batches are written at once; what
arrives meanwhile waits for a writer to be free and then goes in one batch (at most ``MAX_BATCH``). A
request with an Idempotency-Key goes alone (``app.services.jobs.create_job``): its key is claimed first,
and a racing twin waits for that claim's commit, which must not hold up the other requests of a batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job
from app.db.session import transaction
from app.dispatch.broker import TaskQueue
from app.errors import ServiceUnavailable
from app.schemas.jobs import JobCreate, job_document, spec_of
from app.services import jobs
from app.settings import Settings

log = logging.getLogger(__name__)

WRITERS = 2  # batches in flight at once: one is checked and written while the other commits
MAX_BATCH = 64


@dataclass(frozen=True)
class _Submission:
    project_id: str
    request: JobCreate
    answer: asyncio.Future[bytes]


class CreateBatches:
    """The process's job submissions, batched; ``create`` answers with the new job's JSON (what ``GET
    /v1/jobs/{id}`` shows) or raises the request's own error."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        queue: TaskQueue,
        settings: Settings,
        slots: Callable[[], asyncio.Semaphore],
    ) -> None:
        self.factory = factory
        self.queue = queue
        self.settings = settings
        self.slots = slots  # the app's database places (``app.api.deps``), made on the serving loop
        self.waiting: list[_Submission] = []
        self.writers: set[asyncio.Task[None]] = set()

    async def create(self, project_id: str, request: JobCreate) -> bytes:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Submission(project_id, request, answer))
        if len(self.writers) < WRITERS:
            writer = asyncio.create_task(self._write_waiting())
            self.writers.add(writer)
            writer.add_done_callback(self.writers.discard)
        # A request cancelled here (its client gone) cancels only its wait: its job is written all the same,
        # as a create that reached its transaction always was.
        return await answer

    async def _write_waiting(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
            try:
                async with self.slots():
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
        with transaction(self.factory) as session:
            made = jobs.create_jobs(
                session, self.queue, self.settings, [(item.project_id, item.request) for item in batch]
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
