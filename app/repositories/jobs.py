"""Job queries: reads scoped to a project, the list with its filters, the compare-and-set update that
every state transition is made of (``app.services.job_state`` decides which transitions exist), and the
queued jobs' dispatch columns (``app.dispatch`` decides which job goes to the broker when)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, exists, func, select, text, update
from sqlalchemy.orm import Session, joinedload

from app.db.models import Job, JobMetadata, Project
from app.repositories.pagination import keyset_page
from app.statuses import ACTIVE_JOB_STATUSES, OWNED_JOB_STATUSES, JobStatus


@dataclass(frozen=True)
class JobFilters:
    statuses: Collection[JobStatus] = ()
    dataset_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_after: datetime | None = None
    created_before: datetime | None = None


def get(session: Session, project_id: str, job_id: str) -> Job | None:
    """One job with its metadata and artifacts in one query (the relationships' own ``selectin`` would ask
    twice more: it suits pages, where one more query serves every job of the page)."""
    query = (
        select(Job)
        .options(joinedload(Job.metadata_items), joinedload(Job.artifacts))
        .where(Job.id == job_id, Job.project_id == project_id)
    )
    return session.execute(query).unique().scalar_one_or_none()


def get_any(session: Session, job_id: str) -> Job | None:
    """A job by id alone: for the worker, which acts for every project."""
    return session.get(Job, job_id)


def page(
    session: Session, project_id: str, filters: JobFilters, *, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    query = select(Job).where(Job.project_id == project_id)
    if filters.statuses:
        query = query.where(Job.status.in_([str(status) for status in filters.statuses]))
    if filters.dataset_id is not None:
        query = query.where(Job.dataset_id == filters.dataset_id)
    if filters.created_after is not None:
        query = query.where(Job.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(Job.created_at < filters.created_before)
    for key, value in filters.metadata.items():
        query = query.where(
            exists().where(JobMetadata.job_id == Job.id, JobMetadata.key == key, JobMetadata.value == value)
        )
    return keyset_page(session, query, Job.id, after=after, limit=limit)


def add(session: Session, job: Job) -> None:
    session.add(job)
    session.flush()


def compare_and_set(
    session: Session,
    job_id: str,
    *,
    statuses: Collection[str],
    values: Mapping[str, Any],
    where: Collection[ColumnElement[bool]] = (),
) -> bool:
    """``UPDATE jobs SET values WHERE id = job_id AND status IN statuses AND where``: True if it matched.

    The one statement is the whole check: two workers racing for a job cannot both match it.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(statuses)), *where)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def next_event_seq(session: Session, job_id: str) -> int | None:
    """Count up the job's event sequence and return the new value (None: no such job).

    An UPDATE ... RETURNING locks the job's row, so concurrent appends get distinct, increasing numbers.
    """
    return session.scalar(
        update(Job)
        .where(Job.id == job_id)
        .values(event_seq=Job.event_seq + 1)
        .returning(Job.event_seq)
        .execution_options(synchronize_session=False)
    )


def expired_leases(session: Session, now: datetime) -> list[Job]:
    query = select(Job).where(
        Job.status.in_(OWNED_JOB_STATUSES),
        Job.lease_expires_at.is_not(None),
        Job.lease_expires_at < now,
    )
    return list(session.scalars(query.order_by(Job.id)))


def active_for_dataset(session: Session, dataset_id: str) -> list[str]:
    query = select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_JOB_STATUSES))
    return list(session.scalars(query.order_by(Job.id)))


def project_of(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.project_id).where(Job.id == job_id))


def get_fresh(session: Session, job_id: str) -> Job:
    """The job's row as the database has it now, not as this session last saw it (after an UPDATE statement)."""
    return session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()


# --- dispatch: dispatch_requested_at (a pass chose the job) and dispatched_at (the broker took its task) -----

_DISPATCH_LOCK = 0x46540D15  # advisory lock key: one dispatch pass at a time across API processes and workers


def try_dispatch_turn(session: Session) -> bool:
    """Take the dispatch turn for this transaction if no other pass holds it; never wait for one (PostgreSQL).
    On SQLite always True: its ``BEGIN IMMEDIATE`` already made this transaction the only writer."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _DISPATCH_LOCK}))


def queued_count(session: Session, project_id: str) -> int:
    query = select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == JobStatus.QUEUED)
    return int(session.scalar(query) or 0)


def _sent_or_being_sent(since: datetime) -> ColumnElement[bool]:
    """Queued with its task taken by the broker, or chosen by a dispatch pass at ``since`` or later."""
    return (Job.status == JobStatus.QUEUED) & (Job.dispatched_at.is_not(None) | (Job.dispatch_requested_at >= since))


def _waiting(chosen_before: datetime) -> ColumnElement[bool]:
    """Queued with no task sent and none being sent (never chosen, or chosen before ``chosen_before``: that
    pass's send was lost)."""
    return (
        (Job.status == JobStatus.QUEUED)
        & Job.dispatched_at.is_(None)
        & (Job.dispatch_requested_at.is_(None) | (Job.dispatch_requested_at < chosen_before))
    )


def projects_waiting(session: Session, chosen_before: datetime, project_id: str | None) -> list[str]:
    """The projects with jobs waiting for dispatch (see ``_waiting``), the one whose oldest waiting job is
    oldest first."""
    query = select(Job.project_id).where(_waiting(chosen_before)).group_by(Job.project_id)
    if project_id is not None:
        query = query.where(Job.project_id == project_id)
    return list(session.scalars(query.order_by(func.min(Job.created_at), func.min(Job.id))))


def waiting_for_dispatch(session: Session, chosen_before: datetime, project_id: str, limit: int) -> list[str]:
    """The project's ``limit`` oldest jobs waiting for dispatch (see ``_waiting``), oldest first."""
    query = select(Job.id).where(_waiting(chosen_before), Job.project_id == project_id)
    return list(session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)))


def project_dispatch_state(session: Session, chosen_since: datetime, project_id: str) -> tuple[bool, int, int | None]:
    """In one statement, for the look before a project's dispatch pass: whether any of its jobs wait for
    dispatch, how many are in flight (see ``in_flight_by_project``), and its own running limit (None: the
    setting's, or no row)."""
    waiting = exists().where(Job.project_id == project_id, _waiting(chosen_since))
    in_flight = (
        select(func.count())
        .select_from(Job)
        .where(Job.project_id == project_id, Job.status.in_(OWNED_JOB_STATUSES) | _sent_or_being_sent(chosen_since))
    )
    limit = select(Project.max_running_jobs).where(Project.id == project_id)
    row = session.execute(select(waiting, in_flight.scalar_subquery(), limit.scalar_subquery())).one()
    return bool(row[0]), int(row[1] or 0), row[2]


def in_flight_by_project(session: Session, chosen_since: datetime, project_ids: Collection[str]) -> dict[str, int]:
    """Per project, its jobs in flight: owned by a worker, or queued with a task sent or being sent (chosen at
    ``chosen_since`` or later)."""
    query = (
        select(Job.project_id, func.count())
        .where(Job.status.in_(OWNED_JOB_STATUSES) | _sent_or_being_sent(chosen_since), Job.project_id.in_(project_ids))
        .group_by(Job.project_id)
    )
    return {owner: int(count) for owner, count in session.execute(query)}


def mark_dispatch_requested(session: Session, job_ids: Collection[str], now: datetime) -> None:
    session.execute(update(Job).where(Job.id.in_(list(job_ids))).values(dispatch_requested_at=now))


def mark_dispatched(connection: Connection, job_id: str, now: datetime) -> None:
    """The broker took the job's task (on a connection of its own: after the commit that chose the job)."""
    connection.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(dispatched_at=now))


def queued_sent(session: Session, before: datetime | None) -> list[str]:
    """Queued jobs whose task the broker took (before ``before``; None: whenever), by id."""
    sent = Job.dispatched_at.is_not(None) if before is None else Job.dispatched_at < before
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED, sent).order_by(Job.id)))


def forget_sends(session: Session, job_ids: Collection[str]) -> None:
    """Mark still-queued jobs as neither sent nor chosen: the next dispatch pass sends them again."""
    session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED)
        .values(dispatched_at=None, dispatch_requested_at=None)
    )
