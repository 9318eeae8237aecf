"""Projects and API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from app.db.models import ApiKey, Project


def project_by_name(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def active_key_by_hash(session: Session, key_hash: str, now: datetime) -> ApiKey | None:
    """The key with its project, in one query (every authenticated request asks)."""
    return session.scalar(
        select(ApiKey)
        .options(joinedload(ApiKey.project))
        .where(
            ApiKey.key_hash == key_hash,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    )


def keys(session: Session, project_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return list(session.scalars(query))


def key_by_id_or_prefix(session: Session, given: str) -> list[ApiKey]:
    """Keys whose id is ``given``, or whose shown prefix starts with it (``ftk_AbCd``)."""
    if given.startswith("key_"):
        found = session.get(ApiKey, given)
        return [found] if found is not None else []
    return list(session.scalars(select(ApiKey).where(ApiKey.key_prefix.startswith(given[:12]))))


def add(session: Session, row: Project | ApiKey) -> None:
    session.add(row)
    session.flush()
