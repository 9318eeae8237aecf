"""Sweep queries: sweeps scoped to a project, the running ones, a sweep locked for its driver, its trials."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def page(session: Session, project_id: str, *, after: str | None, limit: int) -> tuple[list[Sweep], bool]:
    return keyset_page(session, select(Sweep).where(Sweep.project_id == project_id), Sweep.id, after=after, limit=limit)


def running_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status == SweepStatus.RUNNING).order_by(Sweep.id)))


def trials(session: Session, sweep_id: str) -> list[Job]:
    """The sweep's trial jobs, by trial number."""
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.sweep_trial, Job.id)))
