"""Exports of a succeeded job's weights to ONNX or TorchScript: requested over the API, made by a task.

POST /v1/jobs/{id}/exports -> a row (queued) and, after the commit, a ``finetune.export_job`` task on the
light (cpu) queue -> the task claims it (queued -> running), exports the published weights with
``training.exports`` (parity-checked on 32 validation images of the job's data set), publishes the file
and the updated model card as artifacts, and ends it succeeded (with the card's entry) or failed (with
the measured difference, when the parity check failed).
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.context import Runtime
from app.db.models import JobExport
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import Conflict, NotFound
from app.ids import new_id
from app.repositories import datasets as dataset_rows
from app.repositories import exports as export_rows
from app.repositories import job_records as record_rows
from app.repositories import jobs as job_rows
from app.schemas.exports import ExportCreate
from app.services.dataset_validation import dataset_folder
from app.services.job_records import register_artifact
from app.services.jobs import get_job
from app.services.transactions import short_transaction
from app.statuses import ExportStatus, JobStatus
from app.stores.keys import job_artifact_key
from training import artifacts
from training.errors import DatasetError, TrainingError
from training.spec import Spec

log = logging.getLogger(__name__)

STALE_RUNNING = timedelta(minutes=30)  # a running export not heard of for this long (its worker died) may be redone


def request_export(session: Session, queue: TaskQueue, project_id: str, job_id: str, body: ExportCreate) -> JobExport:
    job = get_job(session, project_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job_id} is {job.status}: only a succeeded job's weights can be exported", param="job_id")
    row = export_rows.of_format(session, job_id, body.format)
    now = utcnow()
    if (
        row is not None
        and row.status in (ExportStatus.QUEUED, ExportStatus.RUNNING)
        and row.updated_at > now - STALE_RUNNING
    ):
        raise Conflict(f"the {body.format} export of job {job_id} is already {row.status} ({row.id})", param="format")
    if row is None:
        row = JobExport(id=new_id("export"), job_id=job_id, format=body.format)
        export_rows.add(session, row)
    row.dynamic_batch = body.dynamic_batch
    row.opset = body.opset if body.format == "onnx" else None
    row.status = ExportStatus.QUEUED
    row.parity = row.error_code = row.error_message = row.finished_at = None
    row.created_at = row.updated_at = now
    session.flush()
    export_id = row.id
    send_after_commit(session, lambda: queue.send_export_job(export_id))
    return row


def list_exports(session: Session, project_id: str, job_id: str) -> list[JobExport]:
    get_job(session, project_id, job_id)
    return export_rows.of_job(session, job_id)


def get_export(session: Session, project_id: str, job_id: str, export_id: str) -> JobExport:
    get_job(session, project_id, job_id)
    row = export_rows.get(session, export_id)
    if row is None or row.job_id != job_id:
        raise NotFound(f"no export {export_id} of job {job_id}", param="export_id")
    return row


# --- the task -------------------------------------------------------------------------------------------


def _finish(runtime: Runtime, export_id: str, status: ExportStatus, **values: Any) -> None:
    with short_transaction(runtime.factory) as session:
        export_rows.finish(session, export_id, status, **values)


def run_export(runtime: Runtime, export_id: str) -> str:
    """The ``finetune.export_job`` task's body. Returns how it ended, for the worker's log."""
    with short_transaction(runtime.factory) as session:
        if not export_rows.claim(session, export_id):
            return "not claimed"
    work = runtime.settings.work_path / f"export-{export_id}"
    try:
        entry = _export(runtime, export_id, work)
    except Exception as error:
        code = error.code if isinstance(error, TrainingError) else "internal"
        message = (
            error.message if isinstance(error, TrainingError) else f"internal error: {type(error).__name__}: {error}"
        )
        log.error("export %s failed (%s): %s", export_id, code, message)
        _finish(runtime, export_id, ExportStatus.FAILED, error_code=code, error_message=message[:2000])
        return f"failed ({code})"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _finish(runtime, export_id, ExportStatus.SUCCEEDED, parity=entry)
    return "succeeded"


def _export(runtime: Runtime, export_id: str, work: Path) -> dict[str, Any]:
    # torch and the exporter: in the worker's pool child that runs the export, never in the API
    from training.data import validation_images
    from training.exports import PARITY_IMAGES, ExportError, ExportRequest, export_run

    store = runtime.store
    with short_transaction(runtime.factory) as session:
        row = export_rows.get(session, export_id)
        assert row is not None
        job = job_rows.get_any(session, row.job_id)
        assert job is not None
        job_id, spec = job.id, Spec.model_validate(job.spec)
        request = ExportRequest(row.format, row.dynamic_batch, row.opset or 18)  # type: ignore[arg-type]
        dataset = dataset_rows.get_any(session, job.dataset_id) if job.dataset_id else None
        keys = {name: record_rows.artifact(session, job_id, name) for name in (artifacts.WEIGHTS, artifacts.CARD)}
        stored_keys = {name: artifact.store_key for name, artifact in keys.items() if artifact is not None}
    if len(stored_keys) < 2:
        raise ExportError(f"job {job_id} has no published weights and model card")
    if dataset is None:
        raise DatasetError("dataset_unreadable", [f"data set {job.dataset_id} is gone: the parity check needs it"])
    work.mkdir(parents=True, exist_ok=True)
    for name, key in stored_keys.items():
        with store.open(key) as source, (work / name).open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    images = validation_images(
        spec.data,
        spec.image_size,
        source=dataset_folder(store, runtime.settings, dataset),
        work_dir=work / "data",
        seed=spec.training.seed,
        settings=runtime.settings.engine,
        count=PARITY_IMAGES,
    )
    entry = export_run(work, request, images)
    with short_transaction(runtime.factory) as session:
        for name in (entry["file"], artifacts.CARD):
            with (work / name).open("rb") as file:
                stored = store.put(job_artifact_key(job_id, name), file)
            register_artifact(session, job_id, name, stored)
    return entry
