"""Where the client connects and how hard it tries: the base URL and API key (arguments, else
``FT_API_URL`` and ``FT_API_KEY``), timeouts, the User-Agent, and the retry policy."""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata

import httpx

from app.client.errors import ConnectionError

API_URL_ENV = "FT_API_URL"
API_KEY_ENV = "FT_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
STREAM_READ_TIMEOUT = 60.0  # seconds: the server pings an idle event stream every 15
RETRYABLE_STATUSES = frozenset({502, 503, 504})


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(API_KEY_ENV) or None


def user_agent() -> str:
    try:
        version = metadata.version("finetune-service")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"finetune-client/{version} httpx/{httpx.__version__} python/{platform.python_version()}"


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": user_agent(), "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


@dataclass(frozen=True)
class Retry:
    """When to send a request again.

    A request that never reached the server (the connection was refused or timed out) is always sent
    again. One that may have reached it is sent again only when it is idempotent (a read, a cancel, a
    create with an ``Idempotency-Key``): after a broken connection, and after a 502, 503 or 504.
    An event stream or a download resumes where it stopped, ``reconnects`` times in a row without
    progress before it gives up.
    """

    attempts: int = 3  # retries of one request after its first try
    reconnects: int = 8  # of a stream or a download, without an event or a byte in between
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter
    max_backoff: float = 8.0
    statuses: frozenset[int] = field(default=RETRYABLE_STATUSES)

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based); a server's Retry-After is honoured,
        up to ``max_backoff``."""
        wanted = _retry_after_seconds(retry_after)
        if wanted is not None:
            return min(wanted, self.max_backoff)
        ceiling = min(self.backoff * 2.0**retry, self.max_backoff)
        return ceiling * random.uniform(0.5, 1.0)  # jitter: clients cut off together do not return together

    def retry_after_error(self, attempt: int, error: httpx.TransportError, idempotent: bool) -> bool:
        """Whether to send again a request that failed with ``error`` on its ``attempt`` (0-based)."""
        if attempt >= self.attempts or isinstance(error, _NEVER_RETRIED):
            return False
        return idempotent or not reached_server(error)

    def retry_after_status(self, attempt: int, status: int, idempotent: bool) -> bool:
        return idempotent and status in self.statuses and attempt < self.attempts


_NEVER_RETRIED = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)


def reached_server(error: httpx.TransportError) -> bool:
    """Whether the request may have reached the server before ``error`` (a failed connect did not)."""
    return not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def retryable(error: httpx.TransportError) -> bool:
    """Whether a stream or a download should reconnect after ``error``."""
    return not isinstance(error, _NEVER_RETRIED)


def stream_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """``timeout`` with a read timeout long enough for an idle event stream."""
    read = None if timeout.read is None else max(timeout.read, STREAM_READ_TIMEOUT)
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


class Reconnects:
    """The reconnections in a row that brought no progress, for a stream or a download; past
    ``retry.reconnects`` the server is declared unreachable."""

    def __init__(self, retry: Retry, what: str) -> None:
        self.retry = retry
        self.what = what
        self.count = 0

    def progressed(self) -> None:
        self.count = 0

    def next_delay(self, why: str) -> float:
        """Seconds to wait before reconnecting; ``ConnectionError`` once they are spent."""
        if self.count >= self.retry.reconnects:
            raise ConnectionError(f"{self.what}: gave up after {self.count} reconnections ({why})")
        delay = self.retry.delay(self.count)
        self.count += 1
        return delay
