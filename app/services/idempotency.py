"""Idempotency-Key on creates: the same key and body answer with the object the first request made (and
its status code); the same key with another body is a 409. Keys are scoped to a project and an endpoint
and remembered for ``Settings.idempotency_ttl_seconds``.

The record is written in the transaction that creates the object: both commit, or neither. Two requests
racing with one key both try to insert it; the primary key lets one commit. A job's create claims the key
first, so a racing twin waits only for that commit and then answers with its replay; a data set's upload
records it last (after streaming the archive), and its twin is a 409.
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
    """Record that ``key`` made ``resource_id``, at the end of the work: Conflict when a racing twin got there
    first (its transaction committed while this one worked)."""
    if key is None:
        return
    if not _inserted(session, _record(project_id, key, resource_id, status)):
        raise Conflict(
            "another request with this Idempotency-Key was being processed at the same time; retry it",
            param="Idempotency-Key",
            code="idempotency_key_in_use",
        )


def claim(
    session: Session, project_id: str, key: IdempotencyKey | None, resource_id: str, status: int
) -> IdempotencyRecord | None:
    """Reserve ``key`` for ``resource_id`` before doing the work: None when reserved (or no key). A racing twin
    that reserved it first makes this wait for its commit, cheaply (before any lock or work), and then
    answers with the twin's record, to replay; Conflict if that twin's body differed or nothing is left."""
    if key is None or _inserted(session, _record(project_id, key, resource_id, status)):
        return None
    record = replayed(session, project_id, key)  # the twin committed: read committed sees its record
    if record is None:
        raise Conflict(
            "another request with this Idempotency-Key was being processed at the same time; retry it",
            param="Idempotency-Key",
            code="idempotency_key_in_use",
        )
    return record


def _record(project_id: str, key: IdempotencyKey, resource_id: str, status: int) -> IdempotencyRecord:
    now = utcnow()
    return IdempotencyRecord(
        project_id=project_id,
        scope=key.scope,
        key=key.key,
        request_hash=key.request_hash,
        resource_id=resource_id,
        status_code=status,
        created_at=now,
        expires_at=now + timedelta(seconds=key.ttl_seconds),
    )


def _inserted(session: Session, record: IdempotencyRecord) -> bool:
    """Whether ``record`` was added; False when its key exists (the insert waits for a twin's commit)."""
    try:
        with session.begin_nested():
            idempotency.add(session, record)
    except IntegrityError:
        return False
    return True


def purge_expired(session: Session) -> int:
    """Delete expired records (the worker's periodic sweep); the number deleted."""
    return idempotency.delete_expired(session, utcnow())
