"""Errors the services raise, each with the HTTP status and stable ``code`` the API reports it with.

Services know nothing of HTTP beyond this mapping; ``app.api.errors`` turns them into the envelope
``{"error": {"code", "message", "param", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or []
        if code is not None:
            self.code = code


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "upload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(ServiceError):
    status_code = 422
    code = "invalid_request"


class InvalidSpec(Unprocessable):
    code = "invalid_spec"


class TooManyRequests(ServiceError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class LeaseLost(Exception):
    """The worker no longer owns the job (its lease expired and the job moved on): stop writing to it."""
