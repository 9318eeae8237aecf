"""Idempotency records: which object a key made, for which request."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import IdempotencyRecord


def get(session: Session, project_id: str, scope: str, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project_id,
            IdempotencyRecord.scope == scope,
            IdempotencyRecord.key == key,
        )
    )


def add(session: Session, record: IdempotencyRecord) -> None:
    session.add(record)
    session.flush()


def remove(session: Session, record: IdempotencyRecord) -> None:
    session.delete(record)
    session.flush()


def delete_expired(session: Session, now: datetime) -> int:
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now))
    return int(result.rowcount)  # type: ignore[attr-defined]
