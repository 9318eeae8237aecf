"""What a running job records: events (a per-job ``seq``), epoch metrics, checkpoints and artifacts.

The worker calls these from the engine's callbacks, each in a short transaction of its own. Given the
worker's ``owner`` token, a function first checks that the worker still owns the job (``LeaseLost``
otherwise), so a worker whose job was taken away writes nothing into the new attempt's record.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.base import insert_all
from app.db.models import Artifact, Checkpoint, EpochMetrics, Job, JobEvent
from app.errors import LeaseLost, NotFound
from app.events import mirror_after_commit
from app.ids import new_id
from app.repositories import job_records, jobs
from app.statuses import OWNED_JOB_STATUSES, EventType
from app.store import StoredObject
from training.spec import MonitorMetric, monitor_mode

LEVELS = {EventType.WARNING: "warning", EventType.ERROR: "error"}


def append_event(
    session: Session, job_id: str, type: EventType, data: dict[str, Any] | None = None, message: str = ""
) -> JobEvent:
    """Append an event; its ``seq`` is one more than the job's last event's."""
    seq = jobs.next_event_seq(session, job_id)
    if seq is None:
        raise NotFound(f"no job {job_id}")
    event = _event(job_id, seq, type, data, message)
    job_records.add(session, event)
    mirror_after_commit(session, event)  # to the job's live stream, once committed
    return event


def first_events(session: Session, job_ids: list[str], type: EventType, data: dict[str, Any], message: str) -> None:
    """New jobs' first events, ``seq`` 1 (their rows, inserted before, have ``event_seq`` 1), in one statement;
    each goes to its job's live stream once committed."""
    events = [_event(job_id, 1, type, data, message) for job_id in job_ids]
    insert_all(session, events)
    for event in events:
        mirror_after_commit(session, event)


def _event(job_id: str, seq: int, type: EventType, data: dict[str, Any] | None, message: str) -> JobEvent:
    return JobEvent(
        id=new_id("event"),
        job_id=job_id,
        seq=seq,
        type=str(type),
        level=LEVELS.get(type, "info"),
        message=message,
        data=data,
        created_at=utcnow(),
    )


def _owned_job(session: Session, job_id: str, owner: str | None) -> Job:
    job = jobs.get_any(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if owner is not None and (job.owner != owner or job.status not in OWNED_JOB_STATUSES):
        raise LeaseLost(f"job {job_id} is no longer owned by {owner}")
    return job


def _monitored(metrics: dict[str, Any], monitor: MonitorMetric) -> float | None:
    """The epoch's value of the monitored metric, the EMA weights' competing as the engine lets them."""
    values = [metrics[name] for name in (monitor, f"ema_{monitor}") if isinstance(metrics.get(name), int | float)]
    if not values:
        return None
    return float(min(values) if monitor_mode(monitor) == "min" else max(values))


def _is_better(job: Job, metrics: dict[str, Any]) -> bool:
    # None (val_split 0): val_acc when the data set has a val/ split after all, else no best epoch.
    monitor: MonitorMetric | None = job.spec["training"].get("monitor") or ("val_acc" if "val_acc" in metrics else None)
    if monitor is None:
        return False
    value = _monitored(metrics, monitor)
    if value is None:
        return False
    best = _monitored(job.best_metrics, monitor) if job.best_metrics else None
    if best is None:
        return True
    return value < best if monitor_mode(monitor) == "min" else value > best


def record_step_metrics(session: Session, job_id: str, metrics: dict[str, Any], *, owner: str | None = None) -> None:
    """Step metrics (every ``training.log_every_steps`` steps): an event, for the live stream and the record."""
    _owned_job(session, job_id, owner)
    message = f"step {metrics['step']}/{metrics['total_steps']}: loss {metrics['loss']:.4g}, lr {metrics['lr']:.3g}"
    append_event(session, job_id, EventType.STEP, metrics, message)


def record_epoch_metrics(
    session: Session, job_id: str, metrics: dict[str, Any], *, owner: str | None = None
) -> EpochMetrics:
    """One row per epoch (``metrics["epoch"]``, 1-based), kept forever; the job's latest and best metrics and
    its progress follow. Recording an epoch again (a resumed run repeats it) replaces that epoch's row."""
    job = _owned_job(session, job_id, owner)
    epoch = int(metrics["epoch"])
    row = job_records.epoch_row(session, job_id, epoch)
    if row is None:
        row = EpochMetrics(job_id=job_id, epoch=epoch, metrics=metrics, created_at=utcnow())
        job_records.add(session, row)
    else:
        row.metrics = metrics
    if epoch >= job.epochs_completed:
        job.epochs_completed = epoch
        job.latest_metrics = metrics
    if _is_better(job, metrics):
        job.best_metrics = metrics
    job.updated_at = utcnow()
    summary = ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith(("train_", "val_")) and v is not None
    )
    append_event(session, job_id, EventType.EPOCH, metrics, f"epoch {epoch}/{job.total_epochs}: {summary}")
    return row


def register_checkpoint(
    session: Session,
    job_id: str,
    stored: StoredObject,
    *,
    epoch: int,
    step: int,
    is_best: bool = False,
    mid_epoch: bool = False,
    metrics: dict[str, Any] | None = None,
    owner: str | None = None,
) -> Checkpoint:
    """A checkpoint written to the store under ``stored.key``. One per step: registering the same step again
    (a resumed attempt rewrites it) updates that row and keeps its id."""
    job = _owned_job(session, job_id, owner)
    checkpoint = job_records.checkpoint_at_step(session, job_id, step)
    if checkpoint is None:
        checkpoint = Checkpoint(id=new_id("checkpoint"), job_id=job_id, project_id=job.project_id, step=step)
        session.add(checkpoint)
    checkpoint.epoch = epoch
    checkpoint.mid_epoch = mid_epoch
    checkpoint.is_best = is_best
    checkpoint.metrics = metrics
    checkpoint.store_key = stored.key
    checkpoint.bytes = stored.size
    checkpoint.sha256 = stored.sha256
    checkpoint.created_at = utcnow()
    checkpoint.deleted_at = None
    session.flush()
    data = {"checkpoint": checkpoint.id, "epoch": epoch, "step": step, "is_best": is_best, "mid_epoch": mid_epoch}
    append_event(session, job_id, EventType.CHECKPOINT, data, f"checkpoint at epoch {epoch}, step {step}")
    return checkpoint


def mark_checkpoint_deleted(session: Session, job_id: str, store_key: str, *, owner: str | None = None) -> None:
    """The retention rule removed a checkpoint's file: the row stays, marked unavailable."""
    _owned_job(session, job_id, owner)
    for checkpoint in job_records.checkpoints_page(session, job_id, after=None, limit=10_000)[0]:
        if checkpoint.store_key == store_key and checkpoint.deleted_at is None:
            checkpoint.deleted_at = utcnow()


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The checkpoint a resumed attempt starts from: the one at the highest step whose file is kept."""
    return job_records.latest_checkpoint(session, job_id)


def register_artifact(
    session: Session, job_id: str, name: str, stored: StoredObject, *, owner: str | None = None
) -> Artifact:
    """A file the job produced (weights, model card...), downloadable under ``name``; the same name again
    replaces it (a retried attempt publishes anew)."""
    _owned_job(session, job_id, owner)
    artifact = job_records.artifact(session, job_id, name)
    if artifact is None:
        artifact = Artifact(id=new_id("artifact"), job_id=job_id, name=name)
        session.add(artifact)
    artifact.store_key = stored.key
    artifact.bytes = stored.size
    artifact.sha256 = stored.sha256
    artifact.created_at = utcnow()
    session.flush()
    data = {"name": name, "bytes": stored.size, "sha256": stored.sha256}
    append_event(session, job_id, EventType.ARTIFACT, data, f"artifact {name} ({stored.size} bytes)")
    return artifact
