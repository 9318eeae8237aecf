"""``/v1/datasets``: upload an archive, read, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CallerDep, IdempotencyKeyHeader, QueueDep, SessionDep, SettingsDep, StoreDep
from app.api.errors import error_responses
from app.api.pagination import After, Limit, list_page
from app.api.uploads import UPLOAD_REQUEST_BODY, receive_upload
from app.ids import new_id
from app.schemas.common import Deleted
from app.schemas.datasets import Dataset, DatasetList
from app.services import datasets
from app.services.idempotency import IdempotencyKey, request_hash
from app.statuses import DatasetStatus

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

DatasetId = Annotated[str, Path(max_length=64, description="A data set id (ds_...).")]


@router.post(
    "",
    status_code=201,
    response_model=Dataset,
    summary="Upload a data set archive",
    openapi_extra=UPLOAD_REQUEST_BODY,
    responses=error_responses(409, 413, 415),
)
async def upload_dataset(
    request: Request,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Dataset:
    """Streams the archive to the store and answers at once with status `validating`; validation runs
    off the request path and ends `ready` (classes, counts) or `failed` (reasons)."""
    dataset_id = new_id("dataset")
    upload = await receive_upload(
        request, store, lambda filename: datasets.archive_key(dataset_id, filename), settings.max_upload_bytes
    )
    key = None
    if idempotency_key is not None:
        body = {"name": upload.name, "filename": upload.filename, "sha256": upload.stored.sha256}
        key = IdempotencyKey(idempotency_key, "datasets.create", request_hash(body), settings.idempotency_ttl_seconds)
    try:
        row, status, created = await run_in_threadpool(
            datasets.create_dataset,
            session,
            store,
            queue,
            caller.project_id,
            dataset_id=dataset_id,
            name=upload.name,
            filename=upload.filename,
            stored=upload.stored,
            idempotency_key=key,
        )
    except BaseException:
        await run_in_threadpool(store.delete_prefix, f"datasets/{dataset_id}")
        raise
    if not created:  # an earlier request with this key made the data set: this copy is not needed
        await run_in_threadpool(store.delete_prefix, f"datasets/{dataset_id}")
    response.status_code = status
    return Dataset.from_row(row)


@router.get("", response_model=DatasetList, summary="List data sets", responses=error_responses())
def list_datasets(
    caller: CallerDep,
    session: SessionDep,
    status: DatasetStatus | None = None,
    after: After = None,
    limit: Limit = 20,
) -> DatasetList:
    """Newest first."""
    rows, has_more = datasets.list_datasets(session, caller.project_id, status=status, after=after, limit=limit)
    return list_page(DatasetList, rows, has_more, Dataset.from_row)


@router.get("/{dataset_id}", response_model=Dataset, summary="Get a data set", responses=error_responses(404))
def get_dataset(dataset_id: DatasetId, caller: CallerDep, session: SessionDep) -> Dataset:
    return Dataset.from_row(datasets.get_dataset(session, caller.project_id, dataset_id))


@router.delete(
    "/{dataset_id}", response_model=Deleted, summary="Delete a data set", responses=error_responses(404, 409)
)
def delete_dataset(
    dataset_id: DatasetId, caller: CallerDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> Deleted:
    """Refused (409) while a queued or running job uses it."""
    row = datasets.delete_dataset(session, store, settings, caller.project_id, dataset_id)
    return Deleted(id=row.id, object="dataset.deleted")
