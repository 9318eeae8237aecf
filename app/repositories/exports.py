"""Export rows: one per job and format, and the compare-and-set updates that claim and finish them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import JobExport
from app.statuses import ExportStatus


def get(session: Session, export_id: str) -> JobExport | None:
    return session.get(JobExport, export_id)


def of_format(session: Session, job_id: str, export_format: str) -> JobExport | None:
    return session.scalar(select(JobExport).where(JobExport.job_id == job_id, JobExport.format == export_format))


def of_job(session: Session, job_id: str) -> list[JobExport]:
    return list(session.scalars(select(JobExport).where(JobExport.job_id == job_id).order_by(JobExport.id)))


def add(session: Session, row: JobExport) -> None:
    session.add(row)


def claim(session: Session, export_id: str) -> bool:
    """queued -> running, compare-and-set: a redelivered task finds it taken and does nothing."""
    claimed = session.execute(
        update(JobExport)
        .where(JobExport.id == export_id, JobExport.status == ExportStatus.QUEUED)
        .values(status=ExportStatus.RUNNING, updated_at=utcnow())
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def finish(session: Session, export_id: str, status: ExportStatus, **values: Any) -> None:
    """running -> ``status``, with the outcome's ``values``."""
    session.execute(
        update(JobExport)
        .where(JobExport.id == export_id, JobExport.status == ExportStatus.RUNNING)
        .values(status=status, updated_at=utcnow(), finished_at=utcnow(), **values)
    )
