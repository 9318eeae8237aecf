"""The API server the client tests talk to: uvicorn in a subprocess, and what the tests need to know of it."""

from __future__ import annotations

from dataclasses import dataclass

from app.client import Retry
from app.settings import Settings
from tests.app.servers import REPO, free_port, wait_until_up

__all__ = ["FAST_RETRY", "MAX_UPLOAD_BYTES", "MB", "PROJECT", "REPO", "ApiServer", "free_port", "wait_until_up"]

MB = 1 << 20
MAX_UPLOAD_BYTES = 16 * MB
PROJECT = "vision"
FAST_RETRY = Retry(attempts=2, reconnects=4, backoff=0.05, max_backoff=0.2)


@dataclass(frozen=True)
class ApiServer:
    url: str
    port: int
    settings: Settings  # the server's own: its home (artifact store), database, broker and stream
