"""ASGI middleware that refuses a request before any route, parser or authentication sees it.

``BodyLimitMiddleware``: every body but the data set upload's (which streams to the store under its own
limit) is read here, counted as it arrives, and refused with a 413 the moment it passes the limit; the app
then reads the buffered copy. A declared ``Content-Length`` over the limit is refused without reading.
``HostAllowlistMiddleware``: a ``Host`` header outside the allowlist is a 400 (a web page a browser loads
from another name, DNS-rebound to the embedded server, cannot drive the API).
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.schemas.common import error_payload

UPLOAD_ROUTES = frozenset({("POST", "/v1/datasets")})


async def send_error(scope: Scope, send: Send, status: int, code: str, message: str, param: str | None = None) -> None:
    """The error envelope, straight from middleware (with the request id when one was assigned)."""
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(error_payload(code, message, param=param, request_id=request_id)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Collection[tuple[str, str]] = UPLOAD_ROUTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"].rstrip("/")) in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, f"declares {int(declared)} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before it finished sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send, f"sent more than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, what: str) -> None:
        message = (
            f"the request body {what}; the limit is {self.max_bytes} bytes (FT_MAX_REQUEST_BYTES). "
            "Data set archives go to POST /v1/datasets, which has its own limit"
        )
        await send_error(scope, send, 413, "request_too_large", message)


def host_name(raw: bytes) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostAllowlistMiddleware:
    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host", b"")
        if host_name(raw) not in self.allowed:
            shown = raw.decode("latin-1")[:100]
            message = f"this server does not answer to host {shown!r}; allowed: {', '.join(sorted(self.allowed))} "
            message += "(FT_ALLOWED_HOSTS)"
            await send_error(scope, send, 400, "host_not_allowed", message, param="header.host")
            return
        await self.app(scope, receive, send)
