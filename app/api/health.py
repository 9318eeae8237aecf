"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import QueueDep, SessionFactoryDep, StoreDep
from app.schemas.health import Health, Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Alive")
def healthz() -> Health:
    return Health()


def _probe(check: Callable[[], object]) -> str:
    try:
        check()
    except Exception as error:
        log.warning("readiness check failed: %s", error)
        return f"unavailable: {type(error).__name__}: {error}"[:300]
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready: database, broker, store (and event stream) reachable",
    responses={503: {"model": Readiness, "description": "A component is unreachable"}},
)
async def readyz(
    request: Request, response: Response, factory: SessionFactoryDep, queue: QueueDep, store: StoreDep
) -> Readiness:
    def database() -> None:
        with factory() as session:
            session.execute(text("SELECT 1"))

    checks = {
        "database": await run_in_threadpool(_probe, database),
        "broker": await run_in_threadpool(_probe, queue.check),
        "store": await run_in_threadpool(_probe, store.check),
    }
    stream = request.app.state.stream
    if stream is not None:
        checks["event_stream"] = await run_in_threadpool(_probe, stream.check)
    ready = all(value == "ok" for value in checks.values())
    response.status_code = 200 if ready else 503
    return Readiness(status="ready" if ready else "unavailable", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
