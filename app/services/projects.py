"""Projects and their API keys. A key is ``ftk_`` + 43 random url-safe characters (256 bits); only its
sha256 is stored (a key that random needs no slow hash), so a leaked database leaks no usable key."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import ApiKey, Project
from app.errors import Unauthorized
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


def create_api_key(session: Session, project_name: str, key_name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for the project (created if missing): the row, and the key itself, shown once."""
    project = get_or_create_project(session, project_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("api_key"),
        project_id=project.id,
        name=key_name,
        key_hash=hash_key(secret),
        key_prefix=secret[:12],
        created_at=utcnow(),
    )
    projects.add(session, row)
    return row, secret


def authenticate(session: Session, bearer: str | None) -> Project:
    """The project an API key belongs to; Unauthorized for a missing, unknown or revoked key."""
    if not bearer:
        raise Unauthorized("send an API key: Authorization: Bearer <key> (create one with `finetune keys create`)")
    key = projects.active_key_by_hash(session, hash_key(bearer))
    if key is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", code="invalid_api_key")
    return key.project
