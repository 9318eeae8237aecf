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

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.context import Services
from app.db.models import JobExport
from app.db.session import transaction
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import Conflict, NotFound
from app.ids import new_id
from app.repositories import datasets as dataset_rows
from app.repositories import job_records as record_rows
from app.repositories import jobs as job_rows
from app.schemas.exports import ExportCreate
from app.services.job_records import register_artifact
from app.services.jobs import WEIGHTS_ARTIFACT, get_job
from app.statuses import ExportStatus, JobStatus

log = logging.getLogger(__name__)

CARD_ARTIFACT = "model.json"
STALE_RUNNING = timedelta(minutes=30)  # a running export not heard of for this long (its worker died) may be redone


def request_export(session: Session, queue: TaskQueue, project_id: str, job_id: str, body: ExportCreate) -> JobExport:
    job = get_job(session, project_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job_id} is {job.status}: only a succeeded job's weights can be exported", param="job_id")
    row = session.scalar(select(JobExport).where(JobExport.job_id == job_id, JobExport.format == body.format))
    now = utcnow()
    if (
        row is not None
        and row.status in (ExportStatus.QUEUED, ExportStatus.RUNNING)
        and row.updated_at > now - STALE_RUNNING
    ):
        raise Conflict(f"the {body.format} export of job {job_id} is already {row.status} ({row.id})", param="format")
    if row is None:
        row = JobExport(id=new_id("export"), job_id=job_id, format=body.format)
        session.add(row)
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
    return list(session.scalars(select(JobExport).where(JobExport.job_id == job_id).order_by(JobExport.id)))


def get_export(session: Session, project_id: str, job_id: str, export_id: str) -> JobExport:
    get_job(session, project_id, job_id)
    row = session.get(JobExport, export_id)
    if row is None or row.job_id != job_id:
        raise NotFound(f"no export {export_id} of job {job_id}", param="export_id")
    return row


# --- the task -------------------------------------------------------------------------------------------


def _claim(session: Session, export_id: str) -> bool:
    """queued -> running, compare-and-set: a redelivered task finds it taken and does nothing."""
    claimed = session.execute(
        update(JobExport)
        .where(JobExport.id == export_id, JobExport.status == ExportStatus.QUEUED)
        .values(status=ExportStatus.RUNNING, updated_at=utcnow())
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _finish(services: Services, export_id: str, status: ExportStatus, **values: Any) -> None:
    with transaction(services.factory) as session:
        session.execute(
            update(JobExport)
            .where(JobExport.id == export_id, JobExport.status == ExportStatus.RUNNING)
            .values(status=status, updated_at=utcnow(), finished_at=utcnow(), **values)
        )


def run_export(services: Services, export_id: str) -> str:
    """The ``finetune.export_job`` task's body. Returns how it ended, for the worker's log."""
    with transaction(services.factory) as session:
        if not _claim(session, export_id):
            return "not claimed"
    work = services.settings.work_path / f"export-{export_id}"
    try:
        entry = _export(services, export_id, work)
    except Exception as error:
        from training.errors import TrainingError

        code = error.code if isinstance(error, TrainingError) else "internal"
        message = (
            error.message if isinstance(error, TrainingError) else f"internal error: {type(error).__name__}: {error}"
        )
        log.error("export %s failed (%s): %s", export_id, code, message)
        _finish(services, export_id, ExportStatus.FAILED, error_code=code, error_message=message[:2000])
        return f"failed ({code})"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _finish(services, export_id, ExportStatus.SUCCEEDED, parity=entry)
    return "succeeded"


def _export(services: Services, export_id: str, work: Path) -> dict[str, Any]:
    from app.services.dataset_validation import dataset_folder
    from training.data import validation_images
    from training.exports import PARITY_IMAGES, ExportRequest, export_run
    from training.spec import Spec

    store = services.store
    with transaction(services.factory) as session:
        row = session.get(JobExport, export_id)
        assert row is not None
        job = job_rows.get_any(session, row.job_id)
        assert job is not None
        job_id, spec = job.id, Spec.model_validate(job.spec)
        request = ExportRequest(row.format, row.dynamic_batch, row.opset or 18)  # type: ignore[arg-type]
        dataset = dataset_rows.get_any(session, job.dataset_id) if job.dataset_id else None
        keys = {name: record_rows.artifact(session, job_id, name) for name in (WEIGHTS_ARTIFACT, CARD_ARTIFACT)}
        stored_keys = {name: artifact.store_key for name, artifact in keys.items() if artifact is not None}
    if len(stored_keys) < 2:
        from training.exports import ExportError

        raise ExportError(f"job {job_id} has no published weights and model card")
    if dataset is None:
        from training.dataset import DatasetError

        raise DatasetError("dataset_unreadable", [f"data set {job.dataset_id} is gone: the parity check needs it"])
    work.mkdir(parents=True, exist_ok=True)
    for name, key in stored_keys.items():
        with store.open(key) as source, (work / name).open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    images = validation_images(
        spec.data,
        spec.image_size,
        source=dataset_folder(store, services.settings, dataset),
        work_dir=work / "data",
        seed=spec.training.seed,
        settings=services.settings.engine,
        count=PARITY_IMAGES,
    )
    entry = export_run(work, request, images)
    with transaction(services.factory) as session:
        for name in (entry["file"], CARD_ARTIFACT):
            with (work / name).open("rb") as file:
                stored = store.put(f"jobs/{job_id}/{name}", file)
            register_artifact(session, job_id, name, stored)
    return entry
