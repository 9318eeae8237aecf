"""``/v1/datasets``: upload an archive, read, list, delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import (
    Caller,
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
from app.api.pagination import After, Limit, list_page
from app.api.uploads import UPLOAD_REQUEST_BODY, Upload, receive_upload
from app.db.models import Dataset as DatasetRow
from app.db.session import transaction
from app.dispatch.admission import check_storage
from app.dispatch.broker import TaskQueue
from app.errors import NotFound
from app.ids import new_id
from app.schemas.common import Deleted
from app.schemas.datasets import ClassThumbnails, Dataset, DatasetList, DatasetThumbnails
from app.services import datasets
from app.services.dataset_validation import read_thumbnails
from app.services.idempotency import IdempotencyKey, request_hash
from app.settings import Settings
from app.statuses import DatasetStatus
from app.store import ArtifactStore
from app.stores import keys

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
    caller: StreamingCallerDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Dataset:
    """Streams the archive to the store and answers at once with status `validating`; validation runs
    off the request path and ends `ready` (classes, counts) or `failed` (reasons)."""
    row, status = await accept_upload(request, caller, factory, settings, store, queue, idempotency_key)
    response.status_code = status
    return Dataset.from_row(row)


async def accept_upload(
    request: Request,
    caller: Caller,
    factory: sessionmaker[Session],
    settings: Settings,
    store: ArtifactStore,
    queue: TaskQueue,
    idempotency_key: str | None,
    check_fields: Callable[[dict[str, str]], None] | None = None,
) -> tuple[DatasetRow, int]:
    """An archive streamed to the store and its data set row made, validation queued: the row and the status
    to answer with. ``check_fields`` vets the form's other fields (``POST /v1/files``' purpose) first.

    No database connection, transaction or request slot is held while the archive streams in (minutes, for a
    large one): the storage check before it and the row after it are short transactions of their own."""
    dataset_id = new_id("dataset")

    def check_room(size: int = 0) -> None:
        with transaction(factory) as session:
            check_storage(session, settings, caller.project_id, size)

    def create(upload: Upload, key: IdempotencyKey | None) -> tuple[DatasetRow, int, bool]:
        with transaction(factory) as session:
            check_storage(session, settings, caller.project_id, upload.stored.size)
            return datasets.create_dataset(
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

    await run_in_threadpool(check_room)  # full already: refuse before reading the body
    upload = await receive_upload(
        request, store, lambda filename: datasets.archive_key(dataset_id, filename), settings.max_upload_bytes
    )
    key = None
    if idempotency_key is not None:
        body = {"name": upload.name, "filename": upload.filename, "sha256": upload.stored.sha256}
        key = IdempotencyKey(idempotency_key, "datasets.create", request_hash(body), settings.idempotency_ttl_seconds)
    try:
        if check_fields is not None:
            check_fields(upload.fields)
        row, status, created = await run_in_threadpool(create, upload, key)
    except BaseException:
        await run_in_threadpool(store.delete_prefix, keys.dataset_prefix(dataset_id))
        raise
    if not created:  # an earlier request with this key made the data set: this copy is not needed
        await run_in_threadpool(store.delete_prefix, keys.dataset_prefix(dataset_id))
    return row, status


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


@router.get(
    "/{dataset_id}/thumbnails",
    response_model=DatasetThumbnails,
    summary="A few thumbnails per class",
    responses=error_responses(404),
)
def dataset_thumbnails(
    dataset_id: DatasetId, caller: CallerDep, session: SessionDep, store: StoreDep
) -> DatasetThumbnails:
    """The first few training images of each class, small, made when the data set validated."""
    dataset = datasets.get_dataset(session, caller.project_id, dataset_id)
    record = read_thumbnails(store, dataset.id)
    if record is None:
        raise NotFound(f"data set {dataset_id} has no thumbnails (it is not ready, or was validated before them)")
    classes = [
        ClassThumbnails(name=name, images=[f"data:image/png;base64,{png}" for png in pngs])
        for name, pngs in record["classes"].items()
    ]
    return DatasetThumbnails(dataset_id=dataset.id, pixels=record["pixels"], classes=classes)


@router.delete(
    "/{dataset_id}", response_model=Deleted, summary="Delete a data set", responses=error_responses(404, 409)
)
def delete_dataset(
    dataset_id: DatasetId, caller: CallerDep, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> Deleted:
    """Refused (409) while a queued or running job uses it."""
    row = datasets.delete_dataset(session, store, settings, caller.project_id, dataset_id)
    return Deleted(id=row.id, object="dataset.deleted")
