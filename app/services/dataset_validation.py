"""Validation of an uploaded data set, off the request path: the worker's ``finetune.validate_dataset``
task calls ``run_dataset_validation``.

The engine's checks (``training.dataset_check.validate_dataset``) extract the archive safely and decode every
image, in a child process with a memory and a time limit (``training.isolated``); the data set ends
``ready`` with its classes and counts, or ``failed`` with every reason (``validation_crashed`` or
``validation_timeout`` when the child hit a limit). It runs in two short transactions around the long
check, so no database lock is held while images decode, and the final write is a compare-and-set on
``validating``: a redelivered task changes nothing.

Each task that starts on a data set counts an attempt first. A validation whose worker dies (and whose
message the broker hands out again) is tried at most ``validation_max_attempts`` times; the next one
ends it ``failed`` with ``validation_crashed`` instead of dying again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.models import Dataset
from app.repositories import datasets
from app.services.datasets import archive_name, dataset_work_dir
from app.services.transactions import short_transaction
from app.settings import Settings
from app.statuses import DatasetStatus
from app.store import CHUNK_BYTES, ArtifactStore, ObjectMissing
from app.stores import cache_for
from app.stores.cache import CacheCorrupt
from app.stores.keys import thumbnails_key
from training.archives import resolve_source
from training.dataset_check import DatasetReport
from training.errors import DatasetError
from training.isolated import ChildLimits, validate_in_child
from training.thumbnails import THUMBNAIL_PIXELS, class_thumbnails

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _local_archive(store: ArtifactStore, settings: Settings, dataset: Dataset, work_dir: Path) -> Iterator[Path]:
    """The archive as a local file under the name it was uploaded with (validation messages name it): a
    link to the store's own file, or to this host's cached copy of a remote store's object."""
    with cache_for(settings).use(store, dataset.store_key, dataset.sha256) as path:
        if not path.is_file():
            raise ObjectMissing(dataset.store_key)
        named = work_dir / ".upload" / archive_name(dataset.filename)
        named.parent.mkdir(parents=True, exist_ok=True)
        if not (named.exists() and named.samefile(path)):
            named.unlink(missing_ok=True)
            try:
                os.link(path, named)  # instant; the bytes stay while the link does
            except OSError:
                shutil.copyfile(path, named)
        yield named


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _ready(report: DatasetReport) -> dict[str, Any]:
    return {
        "status": DatasetStatus.READY,
        "class_names": report.class_names,
        "counts": report.counts,
        "num_images": report.num_images,
        "skipped_files": report.skipped[:1000],
        "validated_at": utcnow(),
    }


def _failed(code: str, message: str, reasons: list[str]) -> dict[str, Any]:
    return {
        "status": DatasetStatus.FAILED,
        "error_code": code,
        "error_message": message,
        "error_reasons": reasons,
        "validated_at": utcnow(),
    }


def _check(store: ArtifactStore, settings: Settings, dataset: Dataset) -> dict[str, Any]:
    """The values the data set ends with: ready, or failed with reasons a person can act on."""
    work_dir = dataset_work_dir(settings, dataset.id)
    corrupt = f"{dataset.filename}: the stored archive does not match the uploaded one (sha256); upload it again"
    try:
        with _local_archive(store, settings, dataset, work_dir) as archive:
            if store.local_path(dataset.store_key) is not None and _sha256(archive) != dataset.sha256:
                return _failed("dataset_corrupt", corrupt, [corrupt])  # (a fetched copy is checked as it comes)
            limits = ChildLimits(settings.validation_memory_mb, settings.validation_timeout_seconds)
            report = validate_in_child(archive, work_dir, settings.engine, limits)
            _store_thumbnails(store, settings, dataset, archive, work_dir)
            return _ready(report)
    except CacheCorrupt:
        return _failed("dataset_corrupt", corrupt, [corrupt])
    except ObjectMissing:
        reason = f"{dataset.filename}: the uploaded archive is missing from the artifact store; upload it again"
        return _failed("dataset_missing", reason, [reason])
    except DatasetError as error:
        shutil.rmtree(work_dir, ignore_errors=True)  # nothing half-extracted stays behind
        return _failed(error.code, error.message, error.problems)


def _store_thumbnails(
    store: ArtifactStore, settings: Settings, dataset: Dataset, archive: Path, work_dir: Path
) -> None:
    """A few PNG thumbnails per class beside the archive, for the console. Best effort: a data set that
    validated is ready even when its pictures could not be made (it just shows none)."""
    try:
        folder = resolve_source(archive, work_dir, settings.engine)  # the extraction validation just made
        pictures = class_thumbnails(folder)
        record = {
            "pixels": THUMBNAIL_PIXELS,
            "classes": {name: [base64.b64encode(png).decode() for png in pngs] for name, pngs in pictures.items()},
        }
        store.put(thumbnails_key(dataset.id), io.BytesIO(json.dumps(record).encode()))
    except Exception:
        log.warning("no thumbnails for data set %s", dataset.id, exc_info=True)


def read_thumbnails(store: ArtifactStore, dataset_id: str) -> dict[str, Any] | None:
    """The thumbnails validation stored for a data set; None for one validated before they existed."""
    if store.stat(thumbnails_key(dataset_id)) is None:
        return None
    with store.open(thumbnails_key(dataset_id)) as file:
        record: dict[str, Any] = json.load(file)
    return record


def run_dataset_validation(
    factory: sessionmaker[Session], store: ArtifactStore, settings: Settings, dataset_id: str
) -> DatasetStatus | None:
    """Validate a ``validating`` data set and record the outcome. Idempotent: a data set already ``ready``
    or ``failed`` is left as it is. The data set's status after, or None when there is no such data set."""
    with short_transaction(factory) as session:
        dataset = datasets.get_any(session, dataset_id)
        if dataset is None or dataset.deleted_at is not None:
            return None
        if dataset.status != DatasetStatus.VALIDATING:
            return DatasetStatus(dataset.status)
        attempts = datasets.start_validation_attempt(session, dataset_id) or 0
        session.expunge(dataset)
    if attempts > settings.validation_max_attempts:
        died = attempts - 1
        reason = (
            f"{dataset.filename}: validation died {died} times without an answer (the worker was lost each "
            f"time; FT_VALIDATION_MAX_ATTEMPTS={settings.validation_max_attempts}); the archive was refused"
        )
        values = _failed("validation_crashed", reason, [reason])
    else:
        values = _check(store, settings, dataset)
    with short_transaction(factory) as session:
        if not datasets.finish_validation(session, dataset_id, **values):
            log.info("data set %s was validated by another task meanwhile", dataset_id)
        current = datasets.get_any(session, dataset_id)
        return DatasetStatus(current.status) if current is not None else None


def dataset_folder(store: ArtifactStore, settings: Settings, dataset: Dataset) -> Path:
    """The extracted ImageFolder tree of a ready data set, for training: the validation's extraction when
    it is still there (on this host), extracted again otherwise."""
    work_dir = dataset_work_dir(settings, dataset.id)
    with _local_archive(store, settings, dataset, work_dir) as archive:
        return resolve_source(archive, work_dir, settings.engine)
