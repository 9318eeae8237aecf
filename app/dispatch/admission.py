"""Per-project limits, and the fair order in which queued jobs are handed to the broker.

Three limits per project (the settings' ``FT_PROJECT_MAX_*``, overridden per project by the ``projects``
columns): jobs in flight at once, jobs waiting, bytes stored. A submission past the waiting or the stored
limit, or an upload past the stored one, is refused with ``429`` (code ``quota_exceeded``, ``param`` the
limit). The running limit refuses nothing: a job past it waits in the database, ``queued`` with no task
sent, until its project has a free slot.

A job is *in flight* from the moment a dispatch pass chooses it (``dispatch_requested_at``) until it ends:
its task sent or being sent, waiting in the broker, running, cancelling or pausing. ``dispatch_waiting``
fills each project's free slots, one job at a time to the project with the fewest in flight (ties: the
project whose oldest waiting job is oldest), so 100 jobs of one project never hold back another's one:
the broker's queue holds at most a project's limit of each project's jobs, interleaved.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from pydantic import TypeAdapter
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Project
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import TooManyRequests
from app.repositories import jobs, projects
from app.settings import Settings

_MAX_RUNTIME = TypeAdapter(timedelta)


@dataclass(frozen=True)
class Limits:
    running_jobs: int
    queued_jobs: int
    stored_bytes: int


def limits_of(session: Session, settings: Settings, project_id: str) -> Limits:
    return _limits(settings, projects.get(session, project_id))


def _limits(settings: Settings, project: Project | None) -> Limits:
    running = project.max_running_jobs if project is not None else None
    queued = project.max_queued_jobs if project is not None else None
    stored = project.max_stored_bytes if project is not None else None
    return Limits(
        running_jobs=running if running is not None else settings.project_max_running_jobs,
        queued_jobs=queued if queued is not None else settings.project_max_queued_jobs,
        stored_bytes=stored if stored is not None else settings.project_max_stored_bytes,
    )


def _refuse(limit: str, value: int, current: int, message: str) -> TooManyRequests:
    detail = {"param": limit, "type": "quota_exceeded", "message": f"limit {value}, current {current}"}
    return TooManyRequests(message, code="quota_exceeded", param=limit, details=[detail])


def check_storage(session: Session, settings: Settings, project_id: str, adding: int = 0) -> None:
    """Refuse (429, ``stored_bytes``) when the project stores its limit already, or would with ``adding`` more."""
    limit = limits_of(session, settings, project_id).stored_bytes
    current = projects.stored_bytes(session, project_id)
    if current + adding > limit or current >= limit:
        raise _refuse(
            "stored_bytes",
            limit,
            current,
            f"the project stores {current} bytes of its {limit}: delete data sets or jobs before adding more",
        )


def admit_job(session: Session, settings: Settings, project_id: str) -> None:
    """A new job may wait in the queue: under the project's queued limit and its storage limit, or 429."""
    limits = limits_of(session, settings, project_id)
    waiting = jobs.queued_count(session, project_id)
    if waiting >= limits.queued_jobs:
        raise _refuse(
            "queued_jobs",
            limits.queued_jobs,
            waiting,
            f"the project has {waiting} jobs queued, its limit: wait for some to start, or cancel some",
        )
    check_storage(session, settings, project_id)


def queue_for_training(session: Session, queue: TaskQueue, job_id: str) -> None:
    """Send the job's train task once ``session`` commits, then record that the broker took it."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    job = jobs.get_any(session, job_id)
    max_runtime = _MAX_RUNTIME.validate_python(job.spec["training"]["max_runtime"]) if job is not None else None
    devices = job.spec["training"].get("devices", 1) if job is not None else 1  # its queue: one per device count

    def send() -> None:
        queue.send_train_job(job_id, max_runtime.total_seconds() if max_runtime is not None else None, devices)
        with engine.begin() as connection:  # after the commit: a short transaction of its own
            jobs.mark_dispatched(connection, job_id, utcnow())

    send_after_commit(session, send)


def dispatch_waiting(
    session: Session, queue: TaskQueue, settings: Settings, *, project_id: str | None = None
) -> list[str]:
    """Choose the waiting jobs that may go to the broker now (of one project, or of all), fairly; their
    tasks are sent once ``session`` commits. Returns the chosen ids, in the order they are sent."""
    jobs.take_dispatch_turn(session)
    now = utcnow()
    # A job chosen longer ago than this and still not sent had its send lost: it waits again.
    chosen_since = now - timedelta(seconds=settings.redispatch_after_seconds)
    waiting: dict[str, deque[str]] = {}
    for job_id, owner in jobs.waiting_for_dispatch(session, chosen_since, project_id):
        waiting.setdefault(owner, deque()).append(job_id)
    if not waiting:
        return []
    in_flight = jobs.in_flight_by_project(session, chosen_since, list(waiting))
    rows = projects.by_ids(session, list(waiting))
    free = {owner: _limits(settings, rows.get(owner)).running_jobs - in_flight.get(owner, 0) for owner in waiting}
    rank = {owner: position for position, owner in enumerate(waiting)}  # by each project's oldest waiting job
    chosen: list[str] = []
    while candidates := [owner for owner, queued in waiting.items() if queued and free[owner] > 0]:
        owner = min(candidates, key=lambda p: (in_flight.get(p, 0), rank[p]))
        job_id = waiting[owner].popleft()
        in_flight[owner] = in_flight.get(owner, 0) + 1
        free[owner] -= 1
        chosen.append(job_id)
    if chosen:
        jobs.mark_dispatch_requested(session, chosen, now)
    for job_id in chosen:
        queue_for_training(session, queue, job_id)
    return chosen
