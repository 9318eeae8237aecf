"""Projects and their API keys. A key is ``ftk_`` + 43 random url-safe characters (256 bits); only its
sha256 is stored (a key that random needs no slow hash), so a leaked database leaks no usable key."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import ApiKey, Project
from app.errors import Conflict, NotFound, Unauthorized
from app.ids import new_id
from app.repositories import projects

KEY_PREFIX = "ftk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    """The project called ``name``, created if missing (two concurrent creators end with one project)."""
    project = projects.project_by_name(session, name)
    if project is not None:
        return project
    try:
        with session.begin_nested():
            project = Project(id=new_id("project"), name=name, created_at=utcnow())
            projects.add(session, project)
    except IntegrityError:
        project = projects.project_by_name(session, name)
        if project is None:
            raise
    return project


def create_api_key(
    session: Session, project_name: str, key_name: str | None = None, expires_in: timedelta | None = None
) -> tuple[ApiKey, str]:
    """A new key for the project (created if missing): the row, and the key itself, shown once."""
    project = get_or_create_project(session, project_name)
    return _new_key(session, project, key_name, expires_in)


def _new_key(
    session: Session, project: Project, key_name: str | None, expires_in: timedelta | None
) -> tuple[ApiKey, str]:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiKey(
        id=new_id("api_key"),
        project_id=project.id,
        name=key_name,
        key_hash=hash_key(secret),
        key_prefix=secret[:12],
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    projects.add(session, row)
    return row, secret


def list_api_keys(session: Session, project_name: str | None = None) -> list[ApiKey]:
    """Every key (of one project), oldest first, revoked and expired ones included."""
    if project_name is None:
        return projects.keys(session)
    project = projects.project_by_name(session, project_name)
    if project is None:
        raise NotFound(f"no project {project_name!r}", param="project")
    return projects.keys(session, project.id)


def find_api_key(session: Session, given: str) -> ApiKey:
    """The one key with id ``given`` or whose shown prefix (``ftk_`` and 8 characters) it is."""
    found = projects.key_by_id_or_prefix(session, given)
    if not found:
        raise NotFound(f"no API key {given!r} (give its id, key_..., or its prefix as `finetune keys list` shows)")
    if len(found) > 1:
        raise Conflict(f"{given!r} names {len(found)} keys: give the key's id")
    return found[0]


def revoke_api_key(session: Session, given: str) -> ApiKey:
    """Revoke a key at once (a revoked key stays revoked: revoking it again changes nothing)."""
    key = find_api_key(session, given)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def rotate_api_key(
    session: Session, given: str, *, grace: timedelta = timedelta(0), expires_in: timedelta | None = None
) -> tuple[ApiKey, ApiKey, str]:
    """A new key for the same project and name; the old one stops working after ``grace`` (now by default).
    Returns (old, new, the new key's secret)."""
    old = find_api_key(session, given)
    if old.revoked_at is not None:
        raise Conflict(f"key {old.id} is revoked: create a new key instead")
    new, secret = _new_key(session, old.project, old.name, expires_in)
    if grace > timedelta(0):
        ends = utcnow() + grace
        old.expires_at = min(old.expires_at, ends) if old.expires_at is not None else ends
    else:
        old.revoked_at = utcnow()
    session.flush()
    return old, new, secret


def authenticate(session: Session, bearer: str | None) -> Project:
    """The project an API key belongs to; Unauthorized for a missing, unknown or revoked key."""
    return authenticate_key(session, bearer).project


def authenticate_key(session: Session, bearer: str | None) -> ApiKey:
    """The active API key ``bearer`` is, with its project; Unauthorized for a missing, unknown or revoked key."""
    if not bearer:
        raise Unauthorized("send an API key: Authorization: Bearer <key> (create one with `finetune keys create`)")
    key = projects.active_key_by_hash(session, hash_key(bearer), utcnow())
    if key is None:
        raise Unauthorized("the API key is not valid (unknown, revoked or expired)", code="invalid_api_key")
    return key
