"""What a job accumulates: events, epoch metrics, checkpoints, artifacts."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Artifact, Checkpoint, EpochMetrics, JobEvent
from app.repositories.pagination import keyset_page
from app.statuses import EventType


def add(session: Session, row: JobEvent | EpochMetrics | Checkpoint | Artifact) -> None:
    session.add(row)
    session.flush()


def events_page(
    session: Session, job_id: str, *, types: list[EventType], after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if types:
        query = query.where(JobEvent.type.in_([str(kind) for kind in types]))
    return keyset_page(session, query, JobEvent.seq, after=after, limit=limit, newest_first=False)


def events_newest_first(
    session: Session, job_id: str, *, before_event: str | None, limit: int
) -> tuple[list[JobEvent], bool] | None:
    """A page of the job's events, newest first, older than the event ``before_event`` (an id); None when
    that event is not the job's."""
    before_seq = None
    if before_event is not None:
        before_seq = session.scalar(select(JobEvent.seq).where(JobEvent.id == before_event, JobEvent.job_id == job_id))
        if before_seq is None:
            return None
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    return keyset_page(session, query, JobEvent.seq, after=before_seq, limit=limit, newest_first=True)


def epoch_row(session: Session, job_id: str, epoch: int) -> EpochMetrics | None:
    return session.get(EpochMetrics, (job_id, epoch))


def epochs(session: Session, job_id: str) -> list[EpochMetrics]:
    query = select(EpochMetrics).where(EpochMetrics.job_id == job_id).order_by(EpochMetrics.epoch)
    return list(session.scalars(query))


def checkpoint_at_step(session: Session, job_id: str, step: int) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step))


def checkpoint(session: Session, project_id: str, checkpoint_id: str) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.project_id == project_id)
    return session.scalar(query)


def checkpoints_page(session: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return keyset_page(session, query, Checkpoint.id, after=after, limit=limit)


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    return session.scalar(query)


def kept_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """The checkpoints whose files the retention rule kept, oldest first."""
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.deleted_at.is_(None))
    return list(session.scalars(query.order_by(Checkpoint.step)))


def artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def last_event_seq(session: Session, job_id: str) -> int:
    """The sequence number of the job's latest event; 0 when it has none."""
    return int(session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)) or 0)


def events_after(session: Session, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    """The job's first ``limit`` events after ``seq``, in order."""
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq).order_by(JobEvent.seq)
    return list(session.scalars(query.limit(limit)))
