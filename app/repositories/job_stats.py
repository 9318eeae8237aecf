"""Aggregates over all jobs for the service's metrics (``app.observability.metrics``): counts by status, the
histogram of finished jobs' durations, the throughput of running jobs. Not scoped to a project: only the
metrics endpoint reads them, and no value names a job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Float, and_, case, cast, extract, func, select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent
from app.statuses import OWNED_JOB_STATUSES, TERMINAL_JOB_STATUSES, EventType, JobStatus

RUNNING_STATUSES = tuple(OWNED_JOB_STATUSES)  # a cancelling or pausing job trains until its next step


def jobs_by_status(session: Session) -> dict[str, int]:
    """Every status, zero included."""
    counts = {str(status): 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = count
    return counts


def _job_seconds(session: Session) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "sqlite":  # naive UTC text: julianday() reads it, in days
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(extract("epoch", Job.finished_at - Job.started_at), Float)


def job_durations(session: Session, buckets: Iterable[float]) -> dict[str, dict[str, Any]]:
    """Finished jobs that had started, by status: ``{"buckets": [count <= each bound], "count", "sum"}``."""
    bounds = list(buckets)
    seconds = _job_seconds(session)
    columns = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in bounds]
    query = (
        select(Job.status, func.count(), func.coalesce(func.sum(seconds), 0.0), *columns)
        .where(Job.status.in_([str(s) for s in TERMINAL_JOB_STATUSES]), Job.started_at.is_not(None))
        .group_by(Job.status)
    )
    found = {}
    for status, count, total, *counts in session.execute(query):
        found[status] = {"buckets": [int(c or 0) for c in counts], "count": int(count), "sum": float(total)}
    return found


def running_throughput(session: Session) -> dict[str, float]:
    """Images per second of each running job: its latest step metrics of this attempt, else its latest epoch's
    if an epoch ended in this attempt; a job with neither has no value yet."""
    running = [str(s) for s in RUNNING_STATUSES]
    latest = (
        select(JobEvent.job_id, func.max(JobEvent.seq).label("seq"))
        .join(Job, Job.id == JobEvent.job_id)
        .where(
            Job.status.in_(running),
            JobEvent.type == str(EventType.STEP),
            JobEvent.created_at >= Job.attempt_started_at,
        )
        .group_by(JobEvent.job_id)
        .subquery()
    )
    steps = session.execute(
        select(JobEvent.job_id, JobEvent.data).join(
            latest, and_(JobEvent.job_id == latest.c.job_id, JobEvent.seq == latest.c.seq)
        )
    )
    speeds = {job_id: data.get("images_per_second") for job_id, data in steps if data}
    epochs = session.execute(
        select(Job.id, Job.latest_metrics).where(
            Job.status.in_(running), Job.epochs_completed > Job.attempt_start_epoch
        )
    )
    for job_id, metrics in epochs:
        if speeds.get(job_id) is None and metrics:
            speeds[job_id] = metrics.get("images_per_second")
    return {job_id: float(speed) for job_id, speed in speeds.items() if isinstance(speed, int | float)}
