"""A running attempt's view of its job row: the fence every write of the attempt passes first.

``fence`` locks the job's row (``SELECT ... FOR UPDATE``) and checks that the attempt still owns it, in the
transaction that then records the write: a claim or a reaper's requeue cannot slip in between the check
and the commit, so a write from an attempt that no longer owns the job is refused, never half-applied.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.statuses import OWNED_JOB_STATUSES


def fence(session: Session, job_id: str, owner: str, attempt: int) -> Job | None:
    """The job's row, locked until the transaction ends, if ``owner``'s attempt ``attempt`` still holds
    it (running, cancelling or pausing); None otherwise."""
    query = select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    job = session.scalar(query)
    if job is None or job.owner != owner or job.attempt != attempt or job.status not in OWNED_JOB_STATUSES:
        return None
    return job


def holder(session: Session, job_id: str) -> Any:
    """The job's status, owner and attempt (a named row), or None when there is no such job: what the
    lease keeper looks at between renewals."""
    return session.execute(select(Job.status, Job.owner, Job.attempt).where(Job.id == job_id)).one_or_none()


def attempt_of(session: Session, job_id: str, owner: str) -> int | None:
    """The number of ``owner``'s attempt at the job, right after its claim; None when it holds none."""
    return session.scalar(select(Job.attempt).where(Job.id == job_id, Job.owner == owner))
