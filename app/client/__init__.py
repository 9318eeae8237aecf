"""A Python client of the finetune API, sync (``Client``) and asyncio (``AsyncClient``).

It imports httpx, pydantic and the engine's torch-free spec model: no torch, FastAPI, SQLAlchemy or Celery.

A new endpoint: its request in ``calls.py`` (a function returning a ``Call``), its method in ``async_client.py``,
then ``make client`` writes ``client.py`` (``Client``) from it; a CLI command for it goes in ``cli/commands/``.
"""

from app.client.async_client import AsyncClient
from app.client.client import Client
from app.client.config import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL, Retry
from app.client.errors import (
    ApiError,
    ChecksumMismatch,
    ClientError,
    Conflict,
    ConnectionError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
)

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "ApiError",
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "Retry",
    "ServerError",
    "Timeout",
    "Unauthorized",
]
