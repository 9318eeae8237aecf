"""``/v1/jobs``: submit, dry-run, list, get, cancel; a job's events, epoch metrics, checkpoints, artifacts."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.orm import Session

from app.api.create_batches import CreateBatches
from app.api.deps import (
    Caller,
    CallerDep,
    DatabaseDep,
    IdempotencyKeyHeader,
    QueueDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
    StreamingCallerDep,
)
from app.api.dry_runs import DryRunPool
from app.api.errors import error_responses
from app.api.hot_reads import read_job, read_job_on_loop, read_page, read_page_on_loop
from app.api.pagination import After, Limit, list_page
from app.api.responses import JSONBytesResponse, ModelJSONResponse
from app.clock import from_unix_seconds
from app.db.async_reads import AsyncReads
from app.errors import Unprocessable
from app.repositories.jobs import JobFilters
from app.schemas.jobs import (
    ArtifactList,
    CheckpointList,
    DryRun,
    EpochTable,
    EventPage,
    Job,
    JobArtifact,
    JobCheckpoint,
    JobConfusion,
    JobCreate,
    JobEpoch,
    JobEvent,
    JobList,
    JobValidate,
)
from app.services import jobs
from app.services.idempotency import IdempotencyKey, request_hash
from app.statuses import EventType, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(max_length=64, description="A job id (ftjob_...).")]
UnixSeconds = Annotated[int | None, Query(ge=0, le=253_402_300_799, description="Unix seconds.")]
_METADATA_PARAM = re.compile(r"^metadata\[([A-Za-z0-9_.:-]{1,64})\]$")
METADATA_FILTER: dict[str, Any] = {
    "parameters": [
        {
            "name": "metadata",
            "in": "query",
            "style": "deepObject",
            "explode": True,
            "required": False,
            "description": "Jobs whose metadata has every given pair: ?metadata[team]=vision&metadata[run]=7",
            "schema": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 512}},
        }
    ]
}


def _metadata_filter(request: Request) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith("metadata"):
            continue
        match = _METADATA_PARAM.match(name)
        if match is None or len(value) > 512:
            raise Unprocessable(
                "filter on metadata as metadata[key]=value (keys: letters, digits, _ . : -)", param="metadata"
            )
        wanted[match.group(1)] = value
    if len(wanted) > 16:
        raise Unprocessable("at most 16 metadata filters", param="metadata")
    return wanted


@router.post("", status_code=201, response_model=Job, summary="Submit a job", responses=error_responses(404, 409))
async def create_job(
    request: Request,
    body: JobCreate,
    database: DatabaseDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Validates the spec, fills its defaults, stores it and queues the job."""
    if idempotency_key is None:  # written with the other submissions arriving meanwhile (one transaction)
        batches: CreateBatches = request.app.state.create_batches
        return JSONBytesResponse(await batches.create(database.caller.project_id, body), status_code=201)
    digest = request_hash(body.model_dump(mode="json"))
    key = IdempotencyKey(idempotency_key, "jobs.create", digest, settings.idempotency_ttl_seconds)

    def create(session: Session, caller: Caller) -> ModelJSONResponse:
        row, status = jobs.create_job(session, queue, settings, caller.project_id, body, key)
        return ModelJSONResponse(Job.from_row(row), status_code=status)

    return await database.write(create)


@router.post(
    "/validate", response_model=DryRun, summary="Dry-run a spec", responses=error_responses(404, 409, 429, 503)
)
async def validate_job(
    request: Request, body: JobValidate, caller: StreamingCallerDep, factory: SessionFactoryDep, settings: SettingsDep
) -> DryRun:
    """The resolved spec, parameter counts, steps per epoch and the learning rate of every parameter group
    at up to 2000 steps of the run, without running or storing anything. Planned in threads of its own,
    within a time limit (503 `dry_run_timeout` past it; 429 `dry_run_busy` when too many wait)."""
    pool: DryRunPool = request.app.state.dry_runs
    return await pool.run(lambda: jobs.dry_run_job(factory, settings, caller.project_id, body.spec))


@router.get("", response_model=JobList, summary="List jobs", openapi_extra=METADATA_FILTER, responses=error_responses())
async def list_jobs(
    request: Request,
    database: DatabaseDep,
    status: Annotated[list[JobStatus] | None, Query(max_length=8)] = None,
    dataset: Annotated[str | None, Query(max_length=64)] = None,
    created_after: UnixSeconds = None,
    created_before: UnixSeconds = None,
    after: After = None,
    limit: Limit = 20,
) -> Response:
    """Newest first. Filters combine: status (repeatable), dataset, metadata[key]=value, creation time."""
    filters = JobFilters(
        statuses=status or (),
        dataset_id=dataset,
        metadata=_metadata_filter(request),
        created_after=from_unix_seconds(created_after) if created_after is not None else None,
        created_before=from_unix_seconds(created_before) if created_before is not None else None,
    )

    async def on_loop(reads: AsyncReads, caller: Caller) -> bytes:
        return await read_page_on_loop(reads, caller.project_id, filters, after, limit)

    def page(session: Session, caller: Caller) -> bytes:
        return read_page(session.connection(), caller.project_id, filters, after, limit)

    return JSONBytesResponse(await database.read_on_loop(on_loop, page))


@router.get("/{job_id}", response_model=Job, summary="Get a job", responses=error_responses(404))
async def get_job(job_id: JobId, database: DatabaseDep) -> Response:
    # A remembered caller's request without a query string is answered before this route (app.api.hot_reads).
    async def on_loop(reads: AsyncReads, caller: Caller) -> bytes:
        return await read_job_on_loop(reads, caller.project_id, job_id)

    def read(session: Session, caller: Caller) -> bytes:
        return read_job(session.connection(), caller.project_id, job_id)

    return JSONBytesResponse(await database.read_on_loop(on_loop, read))


@router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a job", responses=error_responses(404, 409))
def cancel_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> Job:
    """A queued job is cancelled at once; a running one turns `cancelling` and its worker stops at the next
    step. Cancelling a cancelled job changes nothing; a succeeded or failed job is a 409."""
    return Job.from_row(jobs.cancel_job(session, caller.project_id, job_id))


@router.post("/{job_id}/pause", response_model=Job, summary="Pause a job", responses=error_responses(404, 409))
def pause_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> Job:
    """A running job turns `pausing`: its worker checkpoints at the next step and the job turns `paused`,
    freeing the worker. A queued job is held `paused` at once. Pausing a paused job changes nothing; a
    finished or cancelling job is a 409."""
    return Job.from_row(jobs.pause_job(session, caller.project_id, job_id))


@router.post("/{job_id}/resume", response_model=Job, summary="Resume a job", responses=error_responses(404, 409))
def resume_job(job_id: JobId, caller: CallerDep, session: SessionDep, queue: QueueDep, settings: SettingsDep) -> Job:
    """A paused job is queued again and continues from the checkpoint it paused at. Resuming a job that
    is already queued or running changes nothing; any other status is a 409."""
    return Job.from_row(jobs.resume_job(session, queue, settings, caller.project_id, job_id))


@router.get("/{job_id}/events", response_model=EventPage, summary="List a job's events", responses=error_responses(404))
def list_events(
    job_id: JobId,
    caller: CallerDep,
    session: SessionDep,
    type: Annotated[list[EventType] | None, Query(max_length=8)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="The last seq seen.")] = None,
    limit: Limit = 20,
) -> EventPage:
    """Oldest first, by seq."""
    rows, has_more = jobs.list_events(session, caller.project_id, job_id, types=type or [], after=after, limit=limit)
    data = [JobEvent.from_row(row) for row in rows]
    return EventPage(
        data=data,
        has_more=has_more,
        first_seq=data[0].seq if data else None,
        last_seq=data[-1].seq if data else None,
    )


@router.get(
    "/{job_id}/metrics", response_model=EpochTable, summary="A job's epoch metrics", responses=error_responses(404)
)
def epoch_metrics(job_id: JobId, caller: CallerDep, session: SessionDep) -> EpochTable:
    """One row per completed epoch, in order."""
    rows = jobs.epoch_table(session, caller.project_id, job_id)
    return EpochTable(data=[JobEpoch.from_row(row) for row in rows])


@router.get(
    "/{job_id}/checkpoints",
    response_model=CheckpointList,
    summary="List a job's checkpoints",
    responses=error_responses(404),
)
def list_checkpoints(
    job_id: JobId, caller: CallerDep, session: SessionDep, after: After = None, limit: Limit = 20
) -> CheckpointList:
    """Newest first."""
    rows, has_more = jobs.list_checkpoints(session, caller.project_id, job_id, after=after, limit=limit)
    return list_page(CheckpointList, rows, has_more, JobCheckpoint.from_row)


@router.get(
    "/{job_id}/artifacts", response_model=ArtifactList, summary="List a job's artifacts", responses=error_responses(404)
)
def list_artifacts(job_id: JobId, caller: CallerDep, session: SessionDep) -> ArtifactList:
    rows = jobs.list_artifacts(session, caller.project_id, job_id)
    return ArtifactList(data=[JobArtifact.from_row(row) for row in rows])


@router.get(
    "/{job_id}/confusion",
    response_model=JobConfusion,
    summary="A job's confusion matrices",
    responses=error_responses(404),
)
def confusion(job_id: JobId, caller: CallerDep, session: SessionDep, store: StoreDep) -> JobConfusion:
    """The published weights' confusion matrix and per-class accuracy on the validation set, and on the test
    set when the data set has one. A job publishes them when it succeeds (its ``confusion.json`` artifact)."""
    record = jobs.read_confusion(session, store, caller.project_id, job_id)
    return JobConfusion(job_id=job_id, **record)
