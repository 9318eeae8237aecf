"""Dependencies, as ``Annotated`` aliases. Everything comes from ``app.state`` (built by ``create_app``),
so nothing opens a connection at import time and tests swap any of it with ``app.dependency_overrides``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.api.callers import Caller, CallerCache
from app.db.async_reads import AsyncReads, ReadUnavailable
from app.db.session import reading, transaction
from app.dispatch.broker import TaskQueue
from app.errors import Unprocessable
from app.settings import Settings
from app.store import ArtifactStore

__all__ = ["Caller"]  # re-exported: routes import it from here

T = TypeVar("T")

# The dependencies below are ``async def`` although they do no I/O: FastAPI runs a plain ``def`` dependency
# in a thread of the pool, a hop across threads a request for nothing.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]


async def get_session(request: Request, factory: SessionFactoryDep) -> AsyncIterator[Session]:
    """The request's one transaction: committed after the route returns and before the response is
    sent (so a failed commit is an error response, not a lie), rolled back if it raises. Tasks the route
    queued with ``send_after_commit`` go out after the commit.

    A request takes one of ``db_pool_size`` places first, waiting on the event loop. Its session keeps one
    connection from authentication to commit, across several hops between threads; were more requests let in
    than there are connections, a thread could wait for a connection held by a request that waits for a
    thread, and past the thread pool's size all would wait (until the pool's 30 s timeout). The session opens
    here, on the loop (it takes its connection at the first query, in a thread): one hop fewer a request."""
    slots: asyncio.Semaphore = request.app.state.db_slots
    async with slots:
        opened = transaction(factory)
        session = opened.__enter__()
        try:
            yield session
        except BaseException as error:
            with anyio.CancelScope(shield=True):  # the rollback and the connection's return always happen
                await run_in_threadpool(opened.__exit__, type(error), error, error.__traceback__)
            raise
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(opened.__exit__, None, None, None)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `finetune keys create --project NAME`.")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def _bearer(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else None


def get_caller(request: Request, session: SessionDep, settings: SettingsDep, credentials: Credentials) -> Caller:
    """Authenticate in the request's own transaction: one connection and one transaction a request."""
    callers: CallerCache = request.app.state.callers
    return callers.lookup(session, _bearer(credentials), settings.auth_required, settings.default_project)


async def get_caller_apart(request: Request, credentials: Credentials) -> Caller:
    """Authenticate from memory on the loop, or else in a short transaction of its own: for the routes that
    stream (an upload, an event stream) or plan off the request path, which must not hold a connection
    meanwhile, and for the hot routes' ``Database``. The session factory and the settings are taken from the
    app's state, not as dependencies: FastAPI solves every dependency again on each request (solving took a
    fifth of a ``GET /v1/jobs/{id}``'s CPU in a profile, these two among those solved)."""
    state = request.app.state
    factory: sessionmaker[Session] = state.session_factory
    settings: Settings = state.settings
    callers: CallerCache = state.callers
    bearer = _bearer(credentials)
    known = callers.caller(bearer, settings.auth_required)
    if known is not None:
        return known
    slots: asyncio.Semaphore = request.app.state.db_slots
    async with slots:
        return await run_in_threadpool(
            callers.authenticate, factory, bearer, settings.auth_required, settings.default_project
        )


CallerDep = Annotated[Caller, Depends(get_caller)]
StreamingCallerDep = Annotated[Caller, Depends(get_caller_apart)]


@dataclass(frozen=True)
class Database:
    """A hot route's whole database work as one call in one thread of the pool: a request crosses between the
    event loop and the pool twice, where a ``def`` route with ``SessionDep`` and ``CallerDep`` crossed four
    times or more (each sync dependency, the route, the commit). The caller is authenticated before (from
    memory on the loop, or in a short transaction of its own: ``get_caller_apart``), so a request without a
    valid key is a 401 before its body is looked at, as with ``CallerDep``."""

    request: Request
    caller: Caller

    async def read(self, work: Callable[[Session, Caller], T]) -> T:
        """``work`` in a session that only reads (``app.db.session.reading``: no BEGIN and COMMIT on PostgreSQL)."""
        state = self.request.app.state
        return await self._run(work, lambda: reading(state.session_factory, state.reads_engine))

    async def read_on_loop(
        self, on_loop: Callable[[AsyncReads, Caller], Awaitable[T]], work: Callable[[Session, Caller], T]
    ) -> T:
        """``on_loop`` awaited on the event loop's pool of reads where there is one (``app.db.async_reads``:
        PostgreSQL), else, or when that pool cannot answer, ``work`` as ``read`` runs it."""
        reads: AsyncReads | None = self.request.app.state.async_reads
        if reads is not None:
            with contextlib.suppress(ReadUnavailable):
                return await on_loop(reads, self.caller)
        return await self.read(work)

    async def write(self, work: Callable[[Session, Caller], T]) -> T:
        """``work`` in one transaction, committed before this returns (tasks it queued go out after)."""
        factory = self.request.app.state.session_factory
        return await self._run(work, lambda: transaction(factory))

    async def _run(
        self, work: Callable[[Session, Caller], T], open_session: Callable[[], ContextManager[Session]]
    ) -> T:
        def call() -> T:
            with open_session() as session:
                return work(session, self.caller)

        slots: asyncio.Semaphore = self.request.app.state.db_slots
        async with slots:  # see get_session: a connection is taken only with a place
            return await run_in_threadpool(call)  # runs to its end (commit or rollback) even if cancelled


async def get_database(request: Request, caller: StreamingCallerDep) -> Database:
    return Database(request, caller)


DatabaseDep = Annotated[Database, Depends(get_database)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry a create safely: the same key and body answer with the same object for 24 hours.",
    ),
]


async def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it: a typo in a filter (``?stauts=``)
    must not silently return everything. Routes that document extra parameters in their OpenAPI (the
    jobs list's ``metadata[key]``) keep them."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in dependant.query_params}
    for extra in (getattr(route, "openapi_extra", None) or {}).get("parameters", []):
        if extra.get("in") == "query":
            known.add(extra["name"])
    for name in request.query_params:
        base = name.split("[", 1)[0] if "[" in name else name
        if name not in known and base not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise Unprocessable(f"unknown query parameter {name!r}; this route takes: {choices}", param=name)
