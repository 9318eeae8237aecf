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
the broker's queue holds at most a project's limit of each project's jobs, interleaved. A pass runs after
the commit that made a job eligible (a create, a resume, a job that ended), in a short transaction of its
own: passes take turns, and a caller never waits for another's (``dispatch_waiting``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import TypeAdapter
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.models import Project
from app.db.session import factory_of, reading, reads_engine, transaction
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import TooManyRequests
from app.repositories import jobs, projects
from app.settings import Settings

log = logging.getLogger(__name__)
_MAX_RUNTIME = TypeAdapter(timedelta)


@dataclass(frozen=True)
class Limits:
    running_jobs: int
    queued_jobs: int
    stored_bytes: int


def limits_of(session: Session, settings: Settings, project_id: str) -> Limits:
    return _limits(settings, projects.get(session, project_id))


def _limits(settings: Settings, project: Project | None) -> Limits:
    if project is None:
        return _own_limits(settings, None, None, None)
    return _own_limits(settings, project.max_running_jobs, project.max_queued_jobs, project.max_stored_bytes)


def _own_limits(settings: Settings, running: int | None, queued: int | None, stored: int | None) -> Limits:
    """A project's limits from its own columns (None: the setting's)."""
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
        raise _over_storage(limit, current)


def _over_storage(limit: int, current: int) -> TooManyRequests:
    message = f"the project stores {current} bytes of its {limit}: delete data sets or jobs before adding more"
    return _refuse("stored_bytes", limit, current, message)


@dataclass
class Admission:
    """A project's room for new jobs, read in one statement (``projects.admission_state``): its limits, the
    jobs it has queued and the bytes it stores. A batch of creations (``app.services.jobs.create_jobs``)
    reads it once and counts each job it admits."""

    limits: Limits
    queued: int
    stored: int

    def check(self) -> None:
        """A new job may wait in the queue: under the queued limit and the storage limit, or 429."""
        if self.queued >= self.limits.queued_jobs:
            raise _refuse(
                "queued_jobs",
                self.limits.queued_jobs,
                self.queued,
                f"the project has {self.queued} jobs queued, its limit: wait for some to start, or cancel some",
            )
        if self.stored >= self.limits.stored_bytes:
            raise _over_storage(self.limits.stored_bytes, self.stored)

    def admitted(self) -> None:
        self.queued += 1


def admission_of(session: Session, settings: Settings, project_id: str) -> Admission:
    state = projects.admission_state(session, project_id)
    limits = _own_limits(settings, state.max_running_jobs, state.max_queued_jobs, state.max_stored_bytes)
    return Admission(limits, state.queued, state.stored_bytes)


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


MAX_PASSES = 100  # a bound on one caller's rounds; past it (never seen) the periodic sweep sends what is left


def dispatch_waiting(
    factory: sessionmaker[Session], queue: TaskQueue, settings: Settings, *, project_id: str | None = None
) -> list[str]:
    """Hand the waiting jobs that may go now (of one project, or of all) to the broker, fairly, after the
    commit that made them eligible (a new job, a resumed one, a freed slot): each pass in a short transaction
    of its own, its tasks sent once that commits. Returns the chosen ids, in the order they were sent.

    First a look, a read that takes no turn: when it finds nothing to send (the project is at its running
    limit: most submissions to a busy project) there is no pass at all. A later change that frees a slot is
    itself followed by a look, which sees this job, committed before. Otherwise the caller takes the turn,
    without ever waiting for another pass (PostgreSQL: ``pg_try_advisory_xact_lock``): one that finds it
    taken returns at once, and the pass holding it looks again once it has let go. That second look, after
    the release, is what leaves no job behind: a job committed before its caller found the turn taken is
    visible to it, even when the pass had read the waiting jobs before that commit. It covers every project
    (the late arrival may be another project's). On SQLite every write transaction is the only writer
    (``BEGIN IMMEDIATE``): the turn is never found taken, and no second look is needed."""
    engine = factory.kw["bind"]
    assert isinstance(engine, Engine)
    looking = reads_engine(engine)
    chosen: list[str] = []
    scope = project_id
    for _ in range(MAX_PASSES):
        with reading(factory, looking) as session:  # a look, no turn: anything to send?
            if not _anything_to_send(session, settings, scope):
                return chosen
        with transaction(factory) as session:
            if not jobs.try_dispatch_turn(session):
                return chosen  # the pass holding the turn looks again after it lets go
            chosen += dispatch_pass(session, queue, settings, project_id=scope)
        if engine.dialect.name != "postgresql":
            return chosen
        scope = None  # the second look, after the release: every project
    log.warning("dispatch: still more to send after %d passes; the periodic sweep sends the rest", MAX_PASSES)
    return chosen


def dispatch_after_commit(session: Session, queue: TaskQueue, settings: Settings, project_id: str) -> None:
    """``dispatch_waiting`` for the project once ``session`` commits (no dispatch turn taken or waited for
    inside the caller's transaction)."""
    factory = factory_of(session)
    send_after_commit(session, lambda: dispatch_waiting(factory, queue, settings, project_id=project_id))


def dispatch_pass(
    session: Session, queue: TaskQueue, settings: Settings, *, project_id: str | None = None
) -> list[str]:
    """One pass, in a transaction that holds the dispatch turn: choose the waiting jobs (of one project, or
    of all) that may go to the broker now, fairly; their tasks are sent once ``session`` commits."""
    now = utcnow()
    chosen = _choose(session, settings, now, project_id)
    if chosen:
        jobs.mark_dispatch_requested(session, chosen, now)
    for job_id in chosen:
        queue_for_training(session, queue, job_id)
    return chosen


def _anything_to_send(session: Session, settings: Settings, project_id: str | None) -> bool:
    """Would a pass now send anything? For one project one statement; for all, what a pass would choose."""
    now = utcnow()
    if project_id is None:
        return bool(_choose(session, settings, now, None))
    chosen_since = now - timedelta(seconds=settings.redispatch_after_seconds)
    waiting, in_flight, own_limit = jobs.project_dispatch_state(session, chosen_since, project_id)
    return waiting and in_flight < (own_limit if own_limit is not None else settings.project_max_running_jobs)


def _choose(session: Session, settings: Settings, now: datetime, project_id: str | None) -> list[str]:
    """The jobs a pass at ``now`` would send, in order: each project's free slots filled one job at a time,
    to the project with the fewest in flight (ties: the one whose oldest waiting job is oldest)."""
    # A job chosen longer ago than this and still not sent had its send lost: it waits again.
    chosen_since = now - timedelta(seconds=settings.redispatch_after_seconds)
    owners = jobs.projects_waiting(session, chosen_since, project_id)
    if not owners:
        return []
    in_flight = jobs.in_flight_by_project(session, chosen_since, owners)
    rows = projects.by_ids(session, owners)
    free = {owner: _limits(settings, rows.get(owner)).running_jobs - in_flight.get(owner, 0) for owner in owners}
    waiting = {
        owner: deque(jobs.waiting_for_dispatch(session, chosen_since, owner, free[owner]))
        for owner in owners
        if free[owner] > 0
    }
    rank = {owner: position for position, owner in enumerate(owners)}  # by each project's oldest waiting job
    chosen: list[str] = []
    while candidates := [owner for owner, queued in waiting.items() if queued]:
        owner = min(candidates, key=lambda p: (in_flight.get(p, 0), rank[p]))
        chosen.append(waiting[owner].popleft())
        in_flight[owner] = in_flight.get(owner, 0) + 1
    return chosen
