"""The service's notion of now: timezone-aware UTC, and the unix seconds the API shows."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def unix_seconds(moment: datetime) -> int:
    """What the API shows of a timestamp (as OpenAI does): whole seconds since the epoch."""
    return int(moment.timestamp())


def from_unix_seconds(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
