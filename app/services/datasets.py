"""Data sets: create from an upload, read, list, delete. Validation runs off the request path
(``app.services.dataset_validation``)."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Dataset
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import Conflict, NotFound
from app.repositories import datasets, jobs
from app.services import idempotency
from app.services.idempotency import IdempotencyKey
from app.settings import Settings
from app.statuses import DatasetStatus
from app.store import ArtifactStore, StoredObject
from app.stores import keys

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def archive_name(filename: str) -> str:
    """A store-safe file name for an upload that keeps its extension and reads like the original
    (validation messages name it: ``cats.zip: entry ../x points outside the archive``)."""
    base = PurePosixPath(filename.replace("\\", "/")).name
    safe = _UNSAFE.sub("_", base).strip("._-")[-100:].lstrip("._-")
    return safe or "upload"


def archive_key(dataset_id: str, filename: str) -> str:
    return keys.dataset_archive_key(dataset_id, archive_name(filename))


def create_dataset(
    session: Session,
    store: ArtifactStore,
    queue: TaskQueue,
    project_id: str,
    *,
    dataset_id: str,
    name: str | None,
    filename: str,
    stored: StoredObject,
    idempotency_key: IdempotencyKey | None = None,
) -> tuple[Dataset, int, bool]:
    """A data set in ``validating`` for an archive already in the store, with its validation task sent
    after the commit. Returns (data set, status code, created): ``created`` is False when an earlier
    request with the same Idempotency-Key made it, and the caller deletes its own upload.

    Archives are stored once by content: when a data set with the same bytes (sha256 and size) is there,
    the new one reads that archive and this upload is deleted after the commit. The row of the archive's
    holder is locked meanwhile, so that deleting it waits and then sees the new reader (and keeps the file)."""
    record = idempotency.replayed(session, project_id, idempotency_key)
    if record is not None:
        earlier = datasets.get(session, project_id, record.resource_id)
        if earlier is None:
            raise NotFound(f"the data set this Idempotency-Key created ({record.resource_id}) was deleted")
        return earlier, record.status_code, False
    holder = datasets.archive_holder(session, stored.sha256, stored.size)
    if holder is not None and holder.store_key != stored.key and store.stat(holder.store_key) is not None:
        duplicate = stored.key
        send_after_commit(session, lambda: store.delete(duplicate))
        stored = StoredObject(holder.store_key, stored.size, stored.sha256)
    dataset = Dataset(
        id=dataset_id,
        project_id=project_id,
        name=name or archive_name(filename),
        status=DatasetStatus.VALIDATING,
        filename=filename[-255:],
        store_key=stored.key,
        bytes=stored.size,
        sha256=stored.sha256,
        created_at=utcnow(),
        validation_sent_at=utcnow(),  # sent after the commit; a send that fails is re-sent by the sweep
    )
    datasets.add(session, dataset)
    idempotency.remember(session, project_id, idempotency_key, dataset.id, 201)
    send_after_commit(session, lambda: queue.send_validate_dataset(dataset.id))
    return dataset, 201, True


def get_dataset(session: Session, project_id: str, dataset_id: str) -> Dataset:
    dataset = datasets.get(session, project_id, dataset_id)
    if dataset is None:
        raise NotFound(f"no data set {dataset_id}", param="dataset_id")
    return dataset


def list_datasets(
    session: Session, project_id: str, *, status: DatasetStatus | None, after: str | None, limit: int
) -> tuple[list[Dataset], bool]:
    return datasets.page(session, project_id, status=status, after=after, limit=limit)


def dataset_work_dir(settings: Settings, dataset_id: str) -> Path:
    """Where a data set's archive is extracted: validated there, and trained from on this host."""
    return settings.data_path / "datasets" / dataset_id


def delete_dataset(
    session: Session, store: ArtifactStore, settings: Settings, project_id: str, dataset_id: str
) -> Dataset:
    """Delete a data set no queued or running job uses (409 otherwise). The row stays, marked deleted, so
    finished jobs still say what they trained on; its archive and extracted files go after the commit."""
    dataset = datasets.get(session, project_id, dataset_id, for_update=True)
    if dataset is None:
        raise NotFound(f"no data set {dataset_id}", param="dataset_id")
    active = jobs.active_for_dataset(session, dataset_id)
    if active:
        shown = ", ".join(active[:5]) + (" ..." if len(active) > 5 else "")
        raise Conflict(
            f"data set {dataset_id} is used by {len(active)} queued or running job(s): {shown}; "
            "cancel them or wait for them to end",
            code="dataset_in_use",
            details=[{"param": "job", "message": job_id} for job_id in active[:100]],
        )
    dataset.deleted_at = utcnow()
    work_dir = dataset_work_dir(settings, dataset_id)
    archive = dataset.store_key
    shared = datasets.archive_in_use(session, archive, besides=dataset_id)  # the same bytes, uploaded again

    def remove_files() -> None:
        if not shared:
            store.delete(archive)  # under datasets/<id>/, or another (deleted) data set's that it shared
            store.delete_prefix(keys.dataset_prefix(dataset_id))
        else:  # the archive stays for the data set that shares it; what is this one's alone goes
            store.delete(keys.thumbnails_key(dataset_id))
        shutil.rmtree(work_dir, ignore_errors=True)

    send_after_commit(session, remove_files)
    return dataset


def stale_validations(session: Session, older_than_seconds: float) -> list[str]:
    """Data sets still ``validating`` whose task was sent this long ago: it was lost, and the sweep sends it
    again (validation is idempotent). Each is marked sent now, so it is re-sent once per interval, not at
    every sweep; a validation that keeps dying is ended by its attempt count."""
    now = utcnow()
    stale = datasets.validation_sent_before(session, now - timedelta(seconds=older_than_seconds))
    if stale:
        datasets.mark_validation_sent(session, stale, now)
    return stale
