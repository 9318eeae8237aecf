"""Sweep queries: sweeps scoped to a project, the running ones, a sweep locked for its driver, its trials."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, lazyload

from app.db.models import Job, Sweep
from app.repositories.pagination import keyset_page
from app.statuses import SweepStatus


def add(session: Session, sweep: Sweep) -> None:
    session.add(sweep)
    session.flush()


def get(session: Session, project_id: str, sweep_id: str) -> Sweep | None:
    return session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.project_id == project_id))


def locked(session: Session, sweep_id: str) -> Sweep | None:
    """The sweep, its row locked until the transaction ends: one driver at a time advances it (SQLite's
    BEGIN IMMEDIATE already makes every writer wait its turn)."""
    query = select(Sweep).where(Sweep.id == sweep_id).with_for_update().execution_options(populate_existing=True)
    return session.scalar(query)


def page(
    session: Session, project_id: str, *, statuses: Collection[SweepStatus] = (), after: str | None, limit: int
) -> tuple[list[Sweep], bool]:
    query = select(Sweep).where(Sweep.project_id == project_id)
    if statuses:
        query = query.where(Sweep.status.in_([str(status) for status in statuses]))
    return keyset_page(session, query, Sweep.id, after=after, limit=limit)


def running_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status == SweepStatus.RUNNING).order_by(Sweep.id)))


def _trial_jobs() -> Select[Job]:
    # A trial's view needs none of a job's metadata or artifacts: not loaded unless asked for (selectin would).
    return select(Job).options(lazyload(Job.metadata_items), lazyload(Job.artifacts))


def trials(session: Session, sweep_id: str) -> list[Job]:
    """The sweep's trial jobs, by trial number."""
    return list(session.scalars(_trial_jobs().where(Job.sweep_id == sweep_id).order_by(Job.sweep_trial, Job.id)))


def trials_of(session: Session, sweep_ids: Collection[str]) -> dict[str, list[Job]]:
    """The trial jobs of several sweeps (a page of them), by trial number, in one query."""
    found: dict[str, list[Job]] = {sweep_id: [] for sweep_id in sweep_ids}
    if not found:
        return found
    query = _trial_jobs().where(Job.sweep_id.in_(list(found))).order_by(Job.sweep_trial, Job.id)
    for job in session.scalars(query):
        found[str(job.sweep_id)].append(job)
    return found
