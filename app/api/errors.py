"""Every error as one envelope: ``{"error": {"code", "message", "param", "details", "request_id"}}``.

Service errors keep their status and code; request validation errors name the field by its dotted path
(``spec.scheduler.milestones``, using the engine's own ``error_path``); an unexpected exception is a 500
with the request id and no traceback (the log has it).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError, Unauthorized
from app.schemas.common import ErrorResponse, error_payload
from training.spec import error_message, error_path

log = logging.getLogger(__name__)

_LOCATION_PREFIXES = {"body": "", "query": "", "path": "", "header": "header.", "cookie": "cookie."}
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def request_id(request: Request) -> str | None:
    found = request.scope.get("state", {}).get("request_id")
    return str(found) if found is not None else None


def envelope(request: Request, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    payload = error_payload(code, message, request_id=request_id(request), **extra)
    return JSONResponse(payload, status_code=status, headers=headers)


def field_param(loc: tuple[str | int, ...]) -> str | None:
    """``("body", "spec", "scheduler", "multistep", "milestones")`` -> ``spec.scheduler.milestones``."""
    if not loc:
        return None
    where, rest = str(loc[0]), tuple(loc[1:])
    if where not in _LOCATION_PREFIXES:
        return error_path(loc) or None
    path = error_path(rest)
    return (_LOCATION_PREFIXES[where] + path) if path else None


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    return envelope(
        request,
        error.status_code,
        error.code,
        error.message,
        param=error.param,
        details=error.details,
        headers=headers,
    )


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return envelope(request, 400, "invalid_json", "the request body is not valid JSON")
    details = [
        {"param": field_param(tuple(p.get("loc", ()))), "message": error_message(p), "type": p.get("type")}
        for p in problems
    ]
    first = details[0] if details else {"param": None, "message": "invalid request"}
    is_spec = any((d["param"] or "").startswith("spec") for d in details)
    where = f"{first['param']}: " if first["param"] else ""
    more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
    message = f"{where}{first['message']}{more}"
    code = "invalid_spec" if is_spec else "invalid_request"
    return envelope(request, 422, code, message, param=first["param"], details=details)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    message = str(error.detail) if error.detail else code.replace("_", " ")
    if error.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return envelope(request, error.status_code, code, message, headers=dict(error.headers or {}) or None)


def internal_error_payload(request_id: str | None) -> dict[str, Any]:
    return error_payload(
        "internal_error",
        "the server failed to handle the request; quote the request id when you report it",
        request_id=request_id,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


ERROR_RESPONSE: dict[str, Any] = {"model": ErrorResponse}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the error codes a route can answer with (400, 401, 413, 422 and 500 always)."""
    descriptions = {
        400: "Malformed request",
        401: "Missing or invalid API key",
        404: "Not found in this project",
        409: "Conflict with the object's state",
        413: "Request body (or upload) over the size limit",
        415: "Wrong content type",
        422: "Invalid parameters or spec",
        429: "Too many requests of this kind at once",
        500: "Server error",
        503: "The server is busy or a dependency is down",
    }
    wanted = sorted({400, 401, 413, 422, 500, *codes})
    return {code: {**ERROR_RESPONSE, "description": descriptions[code]} for code in wanted}
