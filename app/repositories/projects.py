"""Projects and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Project


def project_by_name(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def project_by_id(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def active_key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


def add(session: Session, row: Project | ApiKey) -> None:
    session.add(row)
    session.flush()
