"""Job queries: reads scoped to a project, the list with its filters, the compare-and-set update that
every state transition is made of (``app.services.job_state`` decides which transitions exist), and the
queued jobs' dispatch columns (``app.dispatch`` decides which job goes to the broker when)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BindParameter,
    ColumnElement,
    Connection,
    Select,
    bindparam,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, joinedload

from app.db.async_reads import AsyncReads
from app.db.driver_reads import DriverQuery
from app.db.models import Artifact, Job, JobMetadata, Project
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


@dataclass(frozen=True)
class JobRecord:
    """A job as the API shows it, read without the ORM: the polled routes' answer (``get_record``). It has
    what ``app.schemas.jobs.Job.from_row`` reads of a ``Job`` row; ``spec`` is None when it was not asked for
    (the API caches validated specs by job id, and a spec never changes once stored)."""

    id: str
    name: str | None
    status: str
    spec: dict[str, Any] | None
    dataset_id: str | None
    metadata_dict: dict[str, str]
    attempt: int
    max_attempts: int
    total_epochs: int
    epochs_completed: int
    attempt_start_epoch: int
    attempt_started_at: datetime | None
    latest_metrics: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    final_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    artifact_names: list[str]
    integrations: list[dict[str, Any]] | None
    sweep_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_RECORD_COLUMNS = [
    Job.id, Job.name, Job.status, Job.dataset_id, Job.attempt, Job.max_attempts, Job.total_epochs,
    Job.epochs_completed, Job.attempt_start_epoch, Job.attempt_started_at, Job.latest_metrics, Job.best_metrics,
    Job.final_metrics, Job.test_metrics, Job.error_code, Job.error_message, Job.integrations, Job.sweep_id,
    Job.created_at, Job.updated_at, Job.started_at, Job.finished_at,
]  # fmt: skip
_RECORD_QUERIES: dict[tuple[str, bool], DriverQuery] = {}


def _record_query(dialect: str, with_spec: bool) -> DriverQuery:
    """One statement a job: its columns, its metadata as one JSON object and its artifacts' names as one
    array (subqueries aggregated by the database: a join would repeat the job's row for each pair of them).
    Built and compiled once per dialect, run on the driver's cursor (``app.db.driver_reads``)."""
    found = _RECORD_QUERIES.get((dialect, with_spec))
    if found is None:
        columns = _record_columns(dialect) + ([Job.spec] if with_spec else [])
        query = select(*columns).where(Job.id == bindparam("job_id"), Job.project_id == bindparam("project_id"))
        found = _RECORD_QUERIES[(dialect, with_spec)] = DriverQuery(query)
    return found


def _record_columns(dialect: str) -> list[Any]:
    if dialect == "postgresql":
        metadata = select(func.json_object_agg(JobMetadata.key, JobMetadata.value, type_=JSON))
        ordered_names = func.json_agg(aggregate_order_by(Artifact.name, Artifact.name), type_=JSON)
        names = select(ordered_names).where(Artifact.job_id == Job.id)
    else:  # SQLite: json_group_array keeps the order of the ordered subquery it reads
        metadata = select(func.json_group_object(JobMetadata.key, JobMetadata.value, type_=JSON))
        ordered = (
            select(Artifact.name).where(Artifact.job_id == Job.id).order_by(Artifact.name).correlate(Job).subquery()
        )
        names = select(func.json_group_array(ordered.c.name, type_=JSON)).select_from(ordered)
    return [
        *_RECORD_COLUMNS,
        metadata.where(JobMetadata.job_id == Job.id).scalar_subquery().label("metadata"),
        names.scalar_subquery().label("names"),
    ]


def get_record(connection: Connection, project_id: str, job_id: str, *, with_spec: bool) -> JobRecord | None:
    """One job of the project, in one statement, or None."""
    query = _record_query(connection.dialect.name, with_spec)
    return _record(query.all(connection, {"job_id": job_id, "project_id": project_id}))


async def get_record_on_loop(reads: AsyncReads, project_id: str, job_id: str, *, with_spec: bool) -> JobRecord | None:
    """``get_record`` on the event loop's pool (``app.db.async_reads``); ReadUnavailable if it cannot answer."""
    query = _record_query(reads.dialect.name, with_spec)
    return _record(await reads.all(query, {"job_id": job_id, "project_id": project_id}))


def _record(rows: list[dict[str, Any]]) -> JobRecord | None:
    return _as_record(rows[0]) if rows else None


def _as_record(values: dict[str, Any]) -> JobRecord:
    values["metadata_dict"] = values.pop("metadata") or {}
    values["artifact_names"] = values.pop("names") or []
    values.setdefault("spec", None)
    return JobRecord(**values)


_PAGE_QUERIES: dict[tuple[Any, ...], DriverQuery] = {}
_SPEC_QUERIES: dict[tuple[str, int], DriverQuery] = {}


def page_records(
    connection: Connection, project_id: str, filters: JobFilters, *, after: str | None, limit: int
) -> tuple[list[JobRecord], bool]:
    """``page``'s jobs as records, without their specs, in one statement; and whether more follow."""
    query, parameters = _page_query(connection.dialect.name, project_id, filters, after, limit)
    return _page(query.all(connection, parameters), limit)


async def page_records_on_loop(
    reads: AsyncReads, project_id: str, filters: JobFilters, *, after: str | None, limit: int
) -> tuple[list[JobRecord], bool]:
    """``page_records`` on the event loop's pool; ReadUnavailable if it cannot answer."""
    query, parameters = _page_query(reads.dialect.name, project_id, filters, after, limit)
    return _page(await reads.all(query, parameters), limit)


def stored_specs(connection: Connection, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored specs of these jobs, by id."""
    query = _spec_query(connection.dialect.name, len(job_ids))
    return _specs(query.all(connection, {f"id_{i}": job_id for i, job_id in enumerate(job_ids)}))


async def stored_specs_on_loop(reads: AsyncReads, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    query = _spec_query(reads.dialect.name, len(job_ids))
    return _specs(await reads.all(query, {f"id_{i}": job_id for i, job_id in enumerate(job_ids)}))


def _page(rows: list[dict[str, Any]], limit: int) -> tuple[list[JobRecord], bool]:
    return [_as_record(values) for values in rows[:limit]], len(rows) > limit


def _specs(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row["spec"] for row in rows}


def _page_query(
    dialect: str, project_id: str, filters: JobFilters, after: str | None, limit: int
) -> tuple[DriverQuery, dict[str, Any]]:
    """The statement of ``page`` for this combination of filters (compiled once per combination: which
    filters are given, how many statuses and metadata pairs), and its parameters."""
    statuses, pairs = list(filters.statuses), list(filters.metadata.items())
    optional = {
        "dataset": filters.dataset_id,
        "created_after": filters.created_after,
        "created_before": filters.created_before,
        "after": after,
    }
    given = tuple(name for name, value in optional.items() if value is not None)
    shape = (dialect, len(statuses), len(pairs), given)
    query = _PAGE_QUERIES.get(shape)
    if query is None:
        query = _PAGE_QUERIES[shape] = DriverQuery(_page_select(dialect, len(statuses), len(pairs), given))
    parameters: dict[str, Any] = {"project_id": project_id, "limit": limit + 1}
    parameters |= {name: optional[name] for name in given}
    parameters |= {f"status_{i}": str(status) for i, status in enumerate(statuses)}
    for i, (key, value) in enumerate(pairs):
        parameters |= {f"key_{i}": key, f"value_{i}": value}
    return query, parameters


def _page_select(dialect: str, statuses: int, pairs: int, given: tuple[str, ...]) -> Select[Any]:
    query = select(*_record_columns(dialect)).where(Job.project_id == bindparam("project_id"))
    if statuses:
        query = query.where(Job.status.in_([bindparam(f"status_{i}") for i in range(statuses)]))
    for i in range(pairs):
        pair = (JobMetadata.key == bindparam(f"key_{i}")) & (JobMetadata.value == bindparam(f"value_{i}"))
        query = query.where(exists().where(JobMetadata.job_id == Job.id, pair))
    conditions = {
        "dataset": Job.dataset_id == bindparam("dataset"),
        "created_after": Job.created_at >= bindparam("created_after"),
        "created_before": Job.created_at < bindparam("created_before"),
        "after": Job.id < bindparam("after"),
    }
    query = query.where(*(conditions[name] for name in given))
    return query.order_by(Job.id.desc()).limit(bindparam("limit"))


def _spec_query(dialect: str, count: int) -> DriverQuery:
    query = _SPEC_QUERIES.get((dialect, count))
    if query is None:
        ids: list[BindParameter[str]] = [bindparam(f"id_{i}") for i in range(count)]
        query = _SPEC_QUERIES[(dialect, count)] = DriverQuery(select(Job.id, Job.spec).where(Job.id.in_(ids)))
    return query


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
