"""ASGI middleware: a request id on every request and response, a 500 envelope for any exception a
route did not handle (no traceback in the body), and Prometheus counts and latencies of requests."""

from __future__ import annotations

import json
import logging
import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import internal_error_payload
from app.ids import new_ulid
from app.observability.logs import current_request_id

log = logging.getLogger(__name__)

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Takes a well-formed ``X-Request-ID`` or makes ``req_<ulid>``; returns it in ``X-Request-ID`` and puts it
    on every log record of the request; turns an unhandled exception into the error envelope with that id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_REQUEST_ID.match(given) else f"req_{new_ulid()}"
        scope.setdefault("state", {})["request_id"] = rid
        log_context = current_request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if started:
                raise  # the response is half sent: all we can do is drop the connection
            body = json.dumps(internal_error_payload(rid)).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            current_request_id.reset(log_context)


class HttpMetrics:
    """HTTP request counts and latencies by method, route template and status (never the raw path); the polled
    reads that went through the engine for want of the event loop's pool."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "finetune_http_requests", "HTTP requests handled.", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "finetune_http_request_duration_seconds",
            "Time to the end of the response.",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.loop_reads_unavailable = Counter(
            "finetune_api_loop_reads_unavailable",
            "Polled reads that the event loop's pool could not serve and that went through the engine instead "
            "(app.db.async_reads), by reason: timeout (no connection in time) or error (a lost connection...).",
            ["reason"],
            registry=registry,
        )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - began)
