"""Dependencies, as ``Annotated`` aliases. Everything comes from ``app.state`` (built by ``create_app``),
so nothing opens a connection at import time and tests swap any of it with ``app.dependency_overrides``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import transaction
from app.dispatch.broker import TaskQueue
from app.errors import Unprocessable
from app.services import projects
from app.settings import Settings
from app.store import ArtifactStore


@dataclass(frozen=True)
class Caller:
    """The project a request acts for (its API key's, or the default one while auth is off)."""

    project_id: str
    project_name: str


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_queue(request: Request) -> TaskQueue:
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


def _caller(session: Session, settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    if settings.auth_required:
        project = projects.authenticate(session, credentials.credentials if credentials else None)
    else:
        project = projects.get_or_create_project(session, settings.default_project)
    return Caller(project_id=project.id, project_name=project.name)


def get_caller(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """Authenticate in the request's own transaction: one connection and one transaction a request."""
    return _caller(session, settings, credentials)


async def get_caller_apart(
    request: Request,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """Authenticate in a short transaction of its own: for the routes that stream (an upload, an event
    stream) or plan off the request path, which must not hold a connection meanwhile."""

    def authenticate() -> Caller:
        with transaction(factory) as session:
            return _caller(session, settings, credentials)

    slots: asyncio.Semaphore = request.app.state.db_slots
    async with slots:
        return await run_in_threadpool(authenticate)


CallerDep = Annotated[Caller, Depends(get_caller)]
StreamingCallerDep = Annotated[Caller, Depends(get_caller_apart)]

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


def reject_unknown_query(request: Request) -> None:
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
