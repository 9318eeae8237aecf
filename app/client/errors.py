"""The errors the client raises: the API's error envelope as typed exceptions, and the ones that come
before or after an answer (an unreachable server, a download whose sha256 does not match).

``ApiError.from_response`` picks the subclass by HTTP status, so ``except NotFound`` reads like the API's
documentation; ``code`` (``dataset_not_ready``, ``invalid_spec``...) and ``param``
(``spec.scheduler.milestones``) are the envelope's own fields.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import httpx

from app.schemas.common import ErrorDetail


class ClientError(Exception):
    """Anything the client raises on purpose."""


class ApiError(ClientError):
    """The server answered with an error: ``{"error": {"code", "message", "param", "details"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        details: list[ErrorDetail] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details or []
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.status} {self.code}{where}: {self.message}"

    def to_envelope(self) -> dict[str, Any]:
        """The error as the API sent it, for ``--json`` output."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "details": [detail.model_dump(mode="json") for detail in self.details],
                "request_id": self.request_id,
            }
        }

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The typed error for a 4xx or 5xx answer (a body that is not the envelope still gives one)."""
        status = response.status_code
        kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
        request_id = response.headers.get("x-request-id")
        try:
            body = json.loads(response.content)
            error = body["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            text = response.content.decode("utf-8", "replace").strip()[:300]
            return kind(status, f"http_{status}", text or response.reason_phrase, request_id=request_id)
        details = [ErrorDetail.model_validate(d) for d in error.get("details") or [] if isinstance(d, dict)]
        return kind(
            status,
            code,
            message,
            param=error.get("param"),
            details=details,
            request_id=error.get("request_id") or request_id,
        )


class InvalidRequest(ApiError):
    """400 or 422: a malformed request or an invalid spec; ``param`` names the field."""


class Unauthorized(ApiError):
    """401: a missing, unknown or revoked API key."""


class NotFound(ApiError):
    """404: no such object in the caller's project (or no such route)."""


class Conflict(ApiError):
    """409: the object's state forbids it (a data set not ready, a finished job, an Idempotency-Key reused)."""


class PayloadTooLarge(ApiError):
    """413: an upload over the server's limit."""


class ServerError(ApiError):
    """5xx: the server failed; quote ``request_id`` when reporting it."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
}


class ConnectionError(ClientError, builtins.ConnectionError):
    """The server could not be reached (refused, unresolvable, dropped), after the retries. Also a builtin
    ``ConnectionError``, so code that catches that one catches this."""


class Timeout(ConnectionError):
    """The server accepted the connection but did not answer in time."""


def unreachable(base_url: str, error: httpx.TransportError) -> ConnectionError:
    """The client's error for a transport failure that the retries did not overcome."""
    kind = Timeout if isinstance(error, httpx.TimeoutException) else ConnectionError
    detail = str(error) or type(error).__name__
    return kind(f"cannot reach the finetune API at {base_url}: {detail}")


class ChecksumMismatch(ClientError):
    """A downloaded file's sha256 is not the one the server vouches for: the partial file is deleted."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(f"{path}: sha256 {actual} does not match the expected {expected}; the download was deleted")
        self.path = path
        self.expected = expected
        self.actual = actual
