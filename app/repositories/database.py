"""Questions about the database server itself, rather than about a table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


def server_started_at(session: Session) -> datetime | None:
    """When PostgreSQL last started (a restart after an outage included); None for SQLite, which has no server."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    started: datetime | None = session.scalar(text("SELECT pg_postmaster_start_time()"))
    return started
