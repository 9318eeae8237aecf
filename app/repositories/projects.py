"""Projects (their limits' rows, what they store) and API keys."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, joinedload

from app.db.models import ApiKey, Artifact, Checkpoint, Dataset, Job, Project


def project_by_name(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def get(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def by_ids(session: Session, project_ids: Collection[str]) -> dict[str, Project]:
    """The projects among ``project_ids`` that have a row (the default project may have none)."""
    return {p.id: p for p in session.scalars(select(Project).where(Project.id.in_(list(project_ids))))}


def stored_bytes(session: Session, project_id: str) -> int:
    """Data set archives, checkpoints not yet deleted by retention, and artifacts of the project's jobs."""
    archives = select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.project_id == project_id)
    checkpoints = select(func.coalesce(func.sum(Checkpoint.bytes), 0)).where(
        Checkpoint.project_id == project_id, Checkpoint.deleted_at.is_(None)
    )
    artifacts = (
        select(func.coalesce(func.sum(Artifact.bytes), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.project_id == project_id)
    )
    total = select(archives.scalar_subquery() + checkpoints.scalar_subquery() + artifacts.scalar_subquery())
    return int(session.scalar(total) or 0)  # one round trip: every submission asks


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
