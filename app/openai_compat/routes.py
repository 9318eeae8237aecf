"""``/v1/files`` and ``/v1/fine_tuning/jobs``: OpenAI's fine-tuning API over this service's data sets and jobs.

Not mapped: ``GET /v1/files/{id}/content`` (an
uploaded archive is not served back), and ``/v1/fine_tuning/checkpoints/.../permissions`` (no sharing
across projects)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app.api.datasets import accept_upload
from app.api.deps import (
    CallerDep,
    IdempotencyKeyHeader,
    QueueDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
    StreamingCallerDep,
)
from app.api.errors import error_responses
from app.api.jobs import METADATA_FILTER, _metadata_filter
from app.api.pagination import After, Limit
from app.api.uploads import UPLOAD_REQUEST_BODY
from app.openai_compat import mapping
from app.openai_compat.schemas import (
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from app.repositories.jobs import JobFilters
from app.services import datasets, jobs

router = APIRouter(prefix="/v1", tags=["openai"])

FileId = Annotated[str, Path(max_length=64, description="A file id: the data set's (ds_...).")]
JobId = Annotated[str, Path(max_length=64, description="A job id (ftjob_...).")]


# --- files ----------------------------------------------------------------------------------


@router.post(
    "/files",
    response_model=FileObject,
    summary="Upload a file (OpenAI)",
    openapi_extra=UPLOAD_REQUEST_BODY,
    responses=error_responses(409, 413, 415),
)
async def create_file(
    request: Request,
    response: Response,
    caller: StreamingCallerDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FileObject:
    """Multipart `file` (an ImageFolder archive) and `purpose: fine-tune`: becomes a data set, `uploaded`
    until validated, then `processed` (ready) or `error` (with `status_details`)."""
    row, status = await accept_upload(
        request, caller, factory, settings, store, queue, idempotency_key, check_fields=mapping.check_purpose
    )
    response.status_code = 200 if status == 201 else status
    return mapping.file_object(row)


@router.get("/files", response_model=FileList, summary="List files (OpenAI)", responses=error_responses())
def list_files(
    caller: CallerDep,
    session: SessionDep,
    purpose: Literal["fine-tune"] | None = None,
    order: Literal["desc"] = "desc",
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> FileList:
    """Newest first (the only order)."""
    rows, has_more = datasets.list_datasets(session, caller.project_id, status=None, after=after, limit=min(limit, 100))
    data = [mapping.file_object(row) for row in rows]
    return FileList(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get(
    "/files/{file_id}", response_model=FileObject, summary="Get a file (OpenAI)", responses=error_responses(404)
)
def get_file(file_id: FileId, caller: CallerDep, session: SessionDep) -> FileObject:
    return mapping.file_object(datasets.get_dataset(session, caller.project_id, file_id))


@router.delete(
    "/files/{file_id}",
    response_model=FileDeleted,
    summary="Delete a file (OpenAI)",
    responses=error_responses(404, 409),
)
def delete_file(
    file_id: FileId, caller: CallerDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> FileDeleted:
    """Refused (409) while a queued or running job uses it."""
    row = datasets.delete_dataset(session, store, settings, caller.project_id, file_id)
    return FileDeleted(id=row.id)


# --- fine-tuning jobs -----------------------------------------------------------------------


@router.post(
    "/fine_tuning/jobs",
    response_model=FineTuningJob,
    summary="Create a fine-tuning job (OpenAI)",
    responses=error_responses(404, 409),
)
def create_fine_tuning_job(
    body: FineTuningJobCreate,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
) -> FineTuningJob:
    """`model` is a backbone (or an earlier job to continue from), `training_file` a processed file; the
    hyperparameters and `seed` go into the spec, which `extra_body={"spec": {...}}` may give in full."""
    request = mapping.job_create(session, caller.project_id, body)
    row, _ = jobs.create_job(session, queue, settings, caller.project_id, request)
    return mapping.fine_tuning_job(row)


@router.get(
    "/fine_tuning/jobs",
    response_model=FineTuningJobList,
    summary="List fine-tuning jobs (OpenAI)",
    openapi_extra=METADATA_FILTER,
    responses=error_responses(),
)
def list_fine_tuning_jobs(
    request: Request, caller: CallerDep, session: SessionDep, after: After = None, limit: Limit = 20
) -> FineTuningJobList:
    """Newest first; `metadata[key]=value` filters."""
    filters = JobFilters(metadata=_metadata_filter(request))
    rows, has_more = jobs.list_jobs(session, caller.project_id, filters, after=after, limit=limit)
    return FineTuningJobList(data=[mapping.fine_tuning_job(row) for row in rows], has_more=has_more)


@router.get(
    "/fine_tuning/jobs/{job_id}",
    response_model=FineTuningJob,
    summary="Get a fine-tuning job (OpenAI)",
    responses=error_responses(404),
)
def retrieve_fine_tuning_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    return mapping.fine_tuning_job(jobs.get_job(session, caller.project_id, job_id))


@router.post(
    "/fine_tuning/jobs/{job_id}/cancel",
    response_model=FineTuningJob,
    summary="Cancel a fine-tuning job (OpenAI)",
    responses=error_responses(404, 409),
)
def cancel_fine_tuning_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    """A queued job is cancelled at once; a running one stops at its next step (shown `running` until then)."""
    return mapping.fine_tuning_job(jobs.cancel_job(session, caller.project_id, job_id))


@router.post(
    "/fine_tuning/jobs/{job_id}/pause",
    response_model=FineTuningJob,
    summary="Pause a fine-tuning job (OpenAI)",
    responses=error_responses(404, 409),
)
def pause_fine_tuning_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> FineTuningJob:
    """A running job checkpoints at its next step and turns `paused` (shown `running` until then); a queued
    job is held at once."""
    return mapping.fine_tuning_job(jobs.pause_job(session, caller.project_id, job_id))


@router.post(
    "/fine_tuning/jobs/{job_id}/resume",
    response_model=FineTuningJob,
    summary="Resume a paused fine-tuning job (OpenAI)",
    responses=error_responses(404, 409),
)
def resume_fine_tuning_job(
    job_id: JobId, caller: CallerDep, session: SessionDep, queue: QueueDep, settings: SettingsDep
) -> FineTuningJob:
    """The job is queued again and continues from the checkpoint it paused at."""
    return mapping.fine_tuning_job(jobs.resume_job(session, queue, settings, caller.project_id, job_id))


@router.get(
    "/fine_tuning/jobs/{job_id}/events",
    response_model=FineTuningJobEventList,
    summary="List a fine-tuning job's events (OpenAI)",
    responses=error_responses(404),
)
def list_fine_tuning_events(
    job_id: JobId, caller: CallerDep, session: SessionDep, after: After = None, limit: Limit = 20
) -> FineTuningJobEventList:
    """Newest first; `after` is the last event id of the previous page. Epoch and step metrics are `metrics`."""
    rows, has_more = jobs.list_events_newest_first(session, caller.project_id, job_id, after_event=after, limit=limit)
    return FineTuningJobEventList(data=[mapping.job_event(row) for row in rows], has_more=has_more)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=FineTuningJobCheckpointList,
    summary="List a fine-tuning job's checkpoints (OpenAI)",
    responses=error_responses(404),
)
def list_fine_tuning_checkpoints(
    job_id: JobId, caller: CallerDep, session: SessionDep, after: After = None, limit: Limit = 10
) -> FineTuningJobCheckpointList:
    """Newest first, with the epoch's metrics; a checkpoint's id can start another job (`backbone.init_from`)."""
    rows, has_more = jobs.list_checkpoints(session, caller.project_id, job_id, after=after, limit=limit)
    data = [mapping.job_checkpoint(row) for row in rows]
    return FineTuningJobCheckpointList(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )
