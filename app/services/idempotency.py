"""Idempotency-Key on creates: the same key and body answer with the object the first request made (and
its status code); the same key with another body is a 409. Keys are scoped to a project and an endpoint
and remembered for ``Settings.idempotency_ttl_seconds``.

The record is written in the transaction that creates the object: both commit, or neither. Two requests
racing with one key both try to insert it; the primary key lets one commit and the other fails (409).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import IdempotencyRecord
from app.errors import Conflict
from app.repositories import idempotency


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    scope: str  # the endpoint, e.g. "jobs.create"
    request_hash: str
    ttl_seconds: int


def request_hash(body: Any) -> str:
    """A stable hash of a JSON-able request body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def replayed(session: Session, project_id: str, key: IdempotencyKey | None) -> IdempotencyRecord | None:
    """The record of an earlier request with this key and body, if any; Conflict when the body differs."""
    if key is None:
        return None
    record = idempotency.get(session, project_id, key.scope, key.key)
    if record is None:
        return None
    if record.expires_at <= utcnow():
        idempotency.remove(session, record)
        return None
    if record.request_hash != key.request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request body; use a new key for a new request",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return record


def remember(session: Session, project_id: str, key: IdempotencyKey | None, resource_id: str, status: int) -> None:
    if key is None:
        return
    now = utcnow()
    record = IdempotencyRecord(
        project_id=project_id,
        scope=key.scope,
        key=key.key,
        request_hash=key.request_hash,
        resource_id=resource_id,
        status_code=status,
        created_at=now,
        expires_at=now + timedelta(seconds=key.ttl_seconds),
    )
    try:
        with session.begin_nested():
            idempotency.add(session, record)
    except IntegrityError:
        raise Conflict(
            "another request with this Idempotency-Key was being processed at the same time; retry it",
            param="Idempotency-Key",
            code="idempotency_key_in_use",
        ) from None


def purge_expired(session: Session) -> int:
    """Delete expired records (the worker's periodic sweep); the number deleted."""
    return idempotency.delete_expired(session, utcnow())
