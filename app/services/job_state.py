"""The job state machine: every status change of a job happens here, and only here.

    queued ──claim──> running ──finish──> succeeded | failed | cancelled | pruned (a sweep's trial)
      │ ▲               │  └──cancel──> cancelling ──finish / lease lost──> cancelled
      │ │               ├──release (preempted) / lease lost──> queued   (or failed: worker_lost)
      │ │               └──pause──> pausing ──release (checkpointed) / lease lost──> paused
      │ └────resume──── paused <──pause (held before it started)── queued
      └──cancel──> cancelled <──cancel── paused          (pausing ──cancel──> cancelling)

Each transition is one compare-and-set ``UPDATE jobs ... WHERE id = ? AND status IN (...) [AND owner = ?]``
and appends a ``status`` event and the webhook outbox rows (``app.webhooks.outbox``) in the same
transaction: of two workers racing, exactly one matches the row, and the record of what happened (and the
deliveries that announce it) commits with the change. Terminal statuses never change.

Attempts: ``attempt`` counts the claims, so while a job runs it is the number of the running attempt
(1-based). A worker that dies loses its lease; the reaper (``requeue_expired_leases``) puts the job back to
``queued`` and the next claim raises ``attempt``, resuming from the last checkpoint. Once ``attempt`` has
reached ``max_attempts`` a lost lease fails the job (``worker_lost``) and no claim succeeds. A worker that
is stopped on purpose (SIGTERM, a deploy, a spot reclaim) checkpoints and calls ``release_job``, which
hands the attempt back: a preemption is not the job's fault and costs it nothing.

Pause: a running job turns ``pausing``; its worker checkpoints at the next step and releases it to
``paused`` (the attempt handed back, as for a preemption), which frees the worker. A queued job is held
``paused`` at once (its task, when it arrives, finds nothing to claim). ``resume_job`` queues it again
and the next claim resumes from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Job
from app.errors import Conflict, NotFound
from app.repositories import jobs
from app.services.job_records import append_event, first_events
from app.statuses import TERMINAL_JOB_STATUSES, EventType, JobStatus
from app.webhooks.outbox import has_subscribers, record_job_status

QUEUED, RUNNING, CANCELLING = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
PAUSING, PAUSED = JobStatus.PAUSING, JobStatus.PAUSED
PRUNED = JobStatus.PRUNED

ALLOWED: Mapping[JobStatus, frozenset[JobStatus]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED, PAUSED}),
    # A sweep's trial that its pruner stops ends pruned: not a failure, not a user's cancel.
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, CANCELLING, QUEUED, PAUSING, PRUNED}),
    # A run that completes (or is pruned) before it notices the cancel still ended so: its results are kept.
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED, PRUNED}),
    # Likewise a run that completes (or fails) before it notices the pause; a cancel overrides a pause.
    PAUSING: frozenset({PAUSED, SUCCEEDED, FAILED, CANCELLING, CANCELLED, PRUNED}),
    PAUSED: frozenset({QUEUED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    PRUNED: frozenset(),
}

WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


def _transition(
    session: Session,
    job_id: str,
    *,
    source: Collection[JobStatus],
    target: JobStatus,
    values: Mapping[str, Any] | None = None,
    where: Collection[ColumnElement[bool]] = (),
    message: str = "",
    data: Mapping[str, Any] | None = None,
) -> JobStatus | None:
    """Move the job from one of ``source`` to ``target`` if it is in one: the status it left, or None.

    One compare-and-set per source status, tried in order, so the event can say where the job came from.
    """
    now = utcnow()
    for status in source:
        if target not in ALLOWED[status]:
            raise ValueError(f"no transition {status} -> {target}")
        row_values = {"status": target, "updated_at": now, **(values or {})}
        if target in TERMINAL_JOB_STATUSES:
            row_values.setdefault("finished_at", now)
            row_values.setdefault("owner", None)
            row_values.setdefault("lease_expires_at", None)
        if jobs.compare_and_set(session, job_id, statuses=[status], values=row_values, where=where):
            event_data = {"from": str(status), "to": str(target), **(data or {})}
            append_event(session, job_id, EventType.STATUS, event_data, message or f"{status} -> {target}")
            record_job_status(session, job_id, target)  # webhooks: the outbox row commits with the change
            return status
    return None


def record_created(session: Session, new: Sequence[Job]) -> None:
    """The first status event of new jobs (``app.services.jobs``, which writes their rows with ``event_seq``
    1), and their webhook deliveries: the subscriptions read once a project."""
    first_events(session, [job.id for job in new], EventType.STATUS, {"from": None, "to": str(QUEUED)}, "job queued")
    for project_id in dict.fromkeys(job.project_id for job in new):
        if has_subscribers(session, project_id, QUEUED):
            for job in new:
                if job.project_id == project_id:
                    record_job_status(session, job.id, QUEUED, project_id)


def claim_job(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """queued -> running for ``owner``, with a lease of ``lease_seconds``; False if another worker won it, it
    was cancelled, or it has used all its attempts. The next attempt's number is ``attempt + 1``."""
    now = utcnow()
    job = jobs.get_any(session, job_id)
    if job is None:
        return False
    claimed = _transition(
        session,
        job_id,
        source=[QUEUED],
        target=RUNNING,
        values={
            "owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "attempt": Job.attempt + 1,
            "started_at": job.started_at or now,
            "attempt_started_at": now,
            "attempt_start_epoch": Job.epochs_completed,
        },
        where=[Job.attempt < Job.max_attempts],
        data={"owner": owner, "attempt": job.attempt + 1},
        message=f"attempt {job.attempt + 1} of {job.max_attempts} started",
    )
    return claimed is not None


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend ``owner``'s lease. False tells the worker to stop: the job was taken from it, or a cancel or
    a pause was asked (the lease is still extended then, so the worker can stop cleanly)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    values = {"lease_expires_at": expires}
    if jobs.compare_and_set(session, job_id, statuses=[RUNNING], values=values, where=[Job.owner == owner]):
        return True
    jobs.compare_and_set(session, job_id, statuses=[CANCELLING, PAUSING], values=values, where=[Job.owner == owner])
    return False


def request_cancel(session: Session, job_id: str) -> JobStatus:
    """queued or paused -> cancelled at once; running or pausing -> cancelling (the worker stops at the next
    step and finishes the job ``cancelled``). Cancelling a cancelled or cancelling job changes nothing.
    The status after."""
    now = utcnow()
    if _transition(session, job_id, source=[QUEUED], target=CANCELLED, message="cancelled before it started"):
        return CANCELLED
    if _transition(session, job_id, source=[PAUSED], target=CANCELLED, message="cancelled while paused"):
        return CANCELLED
    values = {"cancel_requested_at": now}
    if _transition(
        session, job_id, source=[RUNNING, PAUSING], target=CANCELLING, values=values, message="cancel requested"
    ):
        return CANCELLING
    job = jobs.get_any(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    session.refresh(job)
    status = JobStatus(job.status)
    if status in (CANCELLED, CANCELLING):
        return status
    raise Conflict(f"job {job_id} has already {status}; only active jobs can be cancelled", code="job_done")


def request_pause(session: Session, job_id: str) -> JobStatus:
    """queued -> paused at once (held); running -> pausing (the worker checkpoints at the next step and
    releases the job ``paused``). Pausing a paused or pausing job changes nothing. The status after."""
    if _transition(session, job_id, source=[QUEUED], target=PAUSED, message="paused before it started: held"):
        return PAUSED
    if _transition(session, job_id, source=[RUNNING], target=PAUSING, message="pause requested"):
        return PAUSING
    status = _current(session, job_id)
    if status in (PAUSED, PAUSING):
        return status
    if status == CANCELLING:
        raise Conflict(f"job {job_id} is being cancelled; it cannot be paused", code="job_cancelling")
    raise Conflict(f"job {job_id} has already {status}; only queued or running jobs can be paused", code="job_done")


def resume_job(session: Session, job_id: str) -> bool:
    """paused -> queued, waiting for a dispatch pass to send its task (under its project's running limit);
    the next claim resumes from the last checkpoint. False if the job is already queued or running again
    (a repeated resume); a 409 for any other status."""
    values = {"owner": None, "lease_expires_at": None, "dispatched_at": None, "dispatch_requested_at": None}
    if _transition(session, job_id, source=[PAUSED], target=QUEUED, values=values, message="resumed"):
        return True
    status = _current(session, job_id)
    if status in (QUEUED, RUNNING):
        return False
    if status == PAUSING:
        raise Conflict(f"job {job_id} is still pausing; resume it once it is paused", code="job_pausing")
    raise Conflict(f"job {job_id} is {status}; only a paused job can be resumed", code="job_not_paused")


def _current(session: Session, job_id: str) -> JobStatus:
    job = jobs.get_any(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    session.refresh(job)
    return JobStatus(job.status)


def finish_job(
    session: Session,
    job_id: str,
    owner: str,
    status: JobStatus,
    error: JobError | None = None,
    *,
    final_metrics: dict[str, Any] | None = None,
    test_metrics: dict[str, Any] | None = None,
    note: Mapping[str, Any] | None = None,
) -> bool:
    """running or cancelling -> ``status`` (succeeded, failed, cancelled or pruned), if ``owner`` still holds
    the job. ``note`` joins the status event's data (a pruned trial's epoch and objective).

    A failed job needs an ``error`` (a stable code and a one-line message); the traceback belongs in an
    ``error`` event (``append_event``), not here.
    """
    if status not in TERMINAL_JOB_STATUSES:
        raise ValueError(f"finish_job ends a job: {status} is not a final status")
    if (status == FAILED) != (error is not None):
        raise ValueError("a failed job needs an error, and only a failed job has one")
    values: dict[str, Any] = {"final_metrics": final_metrics, "test_metrics": test_metrics}
    data: dict[str, Any] = dict(note or {})
    if error is not None:
        values |= {"error_code": error.code, "error_message": error.message}
        data["error"] = {"code": error.code, "message": error.message}
    source = [RUNNING, CANCELLING, PAUSING]
    if status == CANCELLED:
        source = [CANCELLING, RUNNING, PAUSING]
    left = _transition(
        session,
        job_id,
        source=source,
        target=status,
        values=values,
        where=[Job.owner == owner],
        data=data,
        message=f"job {status}" + (f": {error.message}" if error else ""),
    )
    return left is not None


def release_job(session: Session, job_id: str, owner: str, reason: str = "preempted") -> JobStatus | None:
    """The worker stops without finishing, checkpointed: running -> queued (SIGTERM) with the attempt handed
    back, so another worker resumes from the checkpoint it just wrote; pausing -> paused, likewise; a job
    being cancelled ends cancelled. The status after, or None if ``owner`` no longer held the job."""
    mine = [Job.owner == owner]
    requeue = {"owner": None, "lease_expires_at": None, "attempt": Job.attempt - 1, "dispatched_at": None}
    if _transition(session, job_id, source=[RUNNING], target=QUEUED, values=requeue, where=mine, message=reason):
        return QUEUED
    if _transition(
        session, job_id, source=[PAUSING], target=PAUSED, values=requeue, where=mine, message="paused: checkpointed"
    ):
        return PAUSED
    if _transition(session, job_id, source=[CANCELLING], target=CANCELLED, where=mine, message="cancelled"):
        return CANCELLED
    return None


def requeue_lost_attempt(session: Session, job_id: str, owner: str, reason: str) -> JobStatus | None:
    """Part of the attempt died (a rank of a multi-process job: killed, out of host memory) while its worker
    lives: as for a lost worker, running -> queued with the attempt counted (the next claim resumes from the
    last checkpoint), or failed ``worker_lost`` once the attempts are spent; a job being cancelled ends
    cancelled. The status after, or None if ``owner`` no longer held the job."""
    job = jobs.get_any(session, job_id)
    mine = [Job.owner == owner]
    if job is None or job.owner != owner:
        return None
    if _transition(session, job_id, source=[CANCELLING], target=CANCELLED, where=mine, message="cancelled"):
        return CANCELLED
    note = {"owner": owner, "attempt": job.attempt, "reason": reason}
    if job.attempt >= job.max_attempts:
        message = f"{reason}, on attempt {job.attempt} of {job.max_attempts}"
        failure = {"error_code": WORKER_LOST, "error_message": message}
        error = {"error": {"code": WORKER_LOST, "message": message}}
        if _transition(session, job_id, source=[RUNNING], target=FAILED, values=failure, where=mine, data=note | error):
            return FAILED
        return None
    released: dict[str, Any] = {"owner": None, "lease_expires_at": None, "dispatched_at": None}
    message = f"{reason}: requeued to resume from its last checkpoint"
    if _transition(
        session, job_id, source=[RUNNING], target=QUEUED, values=released, where=mine, data=note, message=message
    ):
        return QUEUED
    return None


def requeue_expired_leases(session: Session, now: datetime | None = None) -> list[str]:
    """Jobs whose worker stopped renewing its lease (killed, host lost): a running job goes back to
    ``queued`` (or ``failed`` with ``worker_lost`` once its attempts are spent), a cancelling job ends
    ``cancelled``, a pausing one ``paused`` (at its last checkpoint). Returns the ids put back to
    ``queued``: send each a train task after the commit.

    Each change re-checks the owner and the expiry in its compare-and-set: a worker that renewed its
    lease in the meantime keeps its job.
    """
    now = now or utcnow()
    requeued: list[str] = []
    for job in jobs.expired_leases(session, now):
        lost = [Job.owner == job.owner, Job.lease_expires_at < now]
        note = {"owner": job.owner, "attempt": job.attempt}
        if job.status == CANCELLING:
            _transition(session, job.id, source=[CANCELLING], target=CANCELLED, where=lost, data=note)
        elif job.status == PAUSING:
            message = f"worker lost while pausing on attempt {job.attempt}: paused at its last checkpoint"
            held = {"owner": None, "lease_expires_at": None, "dispatched_at": None}
            _transition(
                session, job.id, source=[PAUSING], target=PAUSED, values=held, where=lost, data=note, message=message
            )
        elif job.attempt >= job.max_attempts:
            message = f"the worker stopped responding on attempt {job.attempt} of {job.max_attempts}"
            failure = {"error_code": WORKER_LOST, "error_message": message}
            error = {"error": {"code": WORKER_LOST, "message": message}}
            _transition(session, job.id, source=[RUNNING], target=FAILED, values=failure, where=lost, data=note | error)
        else:
            released: dict[str, Any] = {"owner": None, "lease_expires_at": None, "dispatched_at": None}
            message = f"worker lost on attempt {job.attempt}: requeued to resume from its last checkpoint"
            if _transition(
                session,
                job.id,
                source=[RUNNING],
                target=QUEUED,
                values=released,
                where=lost,
                data=note,
                message=message,
            ):
                requeued.append(job.id)
    return requeued


def abort_job(session: Session, job_id: str, error: JobError) -> bool:
    """Any active job -> failed, whoever owns it: for a worker process killed from outside (a hard time
    limit), which cannot finish the job itself."""
    values = {"error_code": error.code, "error_message": error.message}
    data = {"error": {"code": error.code, "message": error.message}}
    left = _transition(
        session,
        job_id,
        source=[RUNNING, CANCELLING, PAUSING, QUEUED],
        target=FAILED,
        values=values,
        data=data,
        message=f"failed: {error.message}",
    )
    return left is not None


def fail_queued_job(session: Session, job_id: str, error: JobError) -> bool:
    """queued -> failed, for a job that cannot start at all (its data set vanished, its spec no longer
    validates after an upgrade)."""
    values = {"error_code": error.code, "error_message": error.message}
    data = {"error": {"code": error.code, "message": error.message}}
    left = _transition(
        session, job_id, source=[QUEUED], target=FAILED, values=values, data=data, message=f"failed: {error.message}"
    )
    return left is not None
