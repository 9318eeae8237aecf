"""Projects (their limits' rows, what they store) and API keys."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BindParameter, ColumnElement, String, bindparam, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, joinedload

from app.db.driver_reads import DriverQuery
from app.db.models import ApiKey, Artifact, Checkpoint, Dataset, Job, Project
from app.statuses import JobStatus


def project_by_name(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def get(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def by_ids(session: Session, project_ids: Collection[str]) -> dict[str, Project]:
    """The projects among ``project_ids`` that have a row (the default project may have none)."""
    return {p.id: p for p in session.scalars(select(Project).where(Project.id.in_(list(project_ids))))}


def stored_bytes(session: Session, project_id: str) -> int:
    """Data set archives, checkpoints not yet deleted by retention, and artifacts of the project's jobs."""
    return int(session.scalar(select(_stored_total(project_id))) or 0)  # one round trip: every upload asks


def _stored_total(project_id: str | BindParameter[str]) -> ColumnElement[int]:
    archives = select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.project_id == project_id)
    checkpoints = select(func.coalesce(func.sum(Checkpoint.bytes), 0)).where(
        Checkpoint.project_id == project_id, Checkpoint.deleted_at.is_(None)
    )
    artifacts = (
        select(func.coalesce(func.sum(Artifact.bytes), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.project_id == project_id)
    )
    return archives.scalar_subquery() + checkpoints.scalar_subquery() + artifacts.scalar_subquery()


@dataclass(frozen=True)
class AdmissionState:
    """What admitting a project's new jobs reads: its own limits (None: the settings'), its queued jobs and
    the bytes it stores."""

    max_running_jobs: int | None
    max_queued_jobs: int | None
    max_stored_bytes: int | None
    queued: int
    stored_bytes: int


def _admission_query() -> DriverQuery:
    project_id = bindparam("project_id", type_=String)

    def own(column: InstrumentedAttribute[int | None]) -> ColumnElement[int | None]:
        return select(column).where(Project.id == project_id).scalar_subquery()

    queued = select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == JobStatus.QUEUED)
    return DriverQuery(
        select(
            own(Project.max_running_jobs).label("max_running_jobs"),
            own(Project.max_queued_jobs).label("max_queued_jobs"),
            own(Project.max_stored_bytes).label("max_stored_bytes"),
            queued.scalar_subquery().label("queued"),
            _stored_total(project_id).label("stored_bytes"),
        )
    )


_ADMISSION = _admission_query()  # built once: a submission runs it, and building it cost more than running it


def admission_state(session: Session, project_id: str) -> AdmissionState:
    """In one statement (the project may have no row: the default project)."""
    (row,) = _ADMISSION.all(session.connection(), {"project_id": project_id})
    return AdmissionState(
        max_running_jobs=row["max_running_jobs"],
        max_queued_jobs=row["max_queued_jobs"],
        max_stored_bytes=row["max_stored_bytes"],
        queued=int(row["queued"] or 0),
        stored_bytes=int(row["stored_bytes"] or 0),
    )


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
