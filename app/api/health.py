"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import QueueDep, SessionFactoryDep, SettingsDep, StoreDep
from app.api.errors import error_responses
from app.errors import NotFound
from app.schemas.health import Health, Readiness
from app.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Alive")
async def healthz() -> Health:
    """Answered on the event loop itself: no thread pool to wait for, whatever else is running."""
    return Health()


def _probe(check: Callable[[], object]) -> str:
    """Either "ok" or "unavailable": the exception's text (hosts, paths, driver messages) goes to the log only."""
    try:
        check()
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return "unavailable"
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
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **error_responses(404)},
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """With FT_METRICS_TOKEN set, only to ``Authorization: Bearer <token>``; without it, only to the loopback
    address. Anyone else gets a 404, as if there were no such route."""
    if not _may_scrape(request, settings):
        raise NotFound("no route GET /metrics")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


def _may_scrape(request: Request, settings: Settings) -> bool:
    if settings.metrics_token is not None:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {settings.metrics_token}".encode())
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
