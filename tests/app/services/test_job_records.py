"""What a worker records for a job: events with increasing seqs, epoch rows, checkpoints, artifacts."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from app.db.models import EpochMetrics, Job, JobEvent
from app.db.session import transaction
from app.errors import LeaseLost
from app.services import job_records, job_state
from app.statuses import EventType, JobStatus
from app.store import StoredObject
from tests.app.factories import make_job


@pytest.fixture
def running_job(settings, factory):
    with transaction(factory) as session:
        job = make_job(session, epochs=5)
        assert job_state.claim_job(session, job.id, "w", 60)
        return job.id


def test_concurrent_appends_get_distinct_increasing_seqs(factory, running_job):
    def append(n: int) -> None:
        for i in range(5):
            with transaction(factory) as session:
                job_records.append_event(session, running_job, EventType.INFO, {"n": n, "i": i})

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with transaction(factory) as session:
        seqs = list(session.scalars(select(JobEvent.seq).where(JobEvent.job_id == running_job).order_by(JobEvent.seq)))
        assert seqs == list(range(1, 23))  # 2 status events, then 20 appended
        assert session.get(Job, running_job).event_seq == 22


def test_epoch_metrics_are_kept_one_row_per_epoch(factory, running_job):
    with transaction(factory) as session:
        for epoch, loss in ((1, 0.9), (2, 0.4), (3, 0.6)):
            job_records.record_epoch_metrics(
                session, running_job, {"epoch": epoch, "val_loss": loss, "val_acc": 1 - loss}, owner="w"
            )
        job_records.record_epoch_metrics(session, running_job, {"epoch": 3, "val_loss": 0.5, "val_acc": 0.5})
    with transaction(factory) as session:
        rows = session.scalars(select(EpochMetrics).where(EpochMetrics.job_id == running_job).order_by("epoch"))
        assert [(r.epoch, r.metrics["val_loss"]) for r in rows] == [(1, 0.9), (2, 0.4), (3, 0.5)]
        job = session.get(Job, running_job)
        assert job.epochs_completed == 3 and job.latest_metrics["val_loss"] == 0.5
        assert job.best_metrics["epoch"] == 2  # by the spec's monitor, val_acc (max)


def test_a_worker_that_lost_the_job_cannot_write_to_it(factory, running_job):
    with transaction(factory) as session:
        job_state.release_job(session, running_job, "w")
    stored = StoredObject("jobs/x/a", 1, "0" * 64)
    with transaction(factory) as session:
        with pytest.raises(LeaseLost):
            job_records.record_epoch_metrics(session, running_job, {"epoch": 1}, owner="w")
        with pytest.raises(LeaseLost):
            job_records.register_checkpoint(session, running_job, stored, epoch=1, step=1, owner="w")
        with pytest.raises(LeaseLost):
            job_records.register_artifact(session, running_job, "model.safetensors", stored, owner="w")


def test_checkpoints_one_per_step_and_the_latest_available(factory, running_job):
    with transaction(factory) as session:
        for step in (10, 20, 30):
            stored = StoredObject(f"jobs/{running_job}/ckpt-{step}.pt", step, "f" * 64)
            job_records.register_checkpoint(session, running_job, stored, epoch=step // 10, step=step, owner="w")
        again = StoredObject(f"jobs/{running_job}/ckpt-30.pt", 31, "e" * 64)
        rewritten = job_records.register_checkpoint(session, running_job, again, epoch=3, step=30, owner="w")
        job_records.mark_checkpoint_deleted(session, running_job, f"jobs/{running_job}/ckpt-30.pt", owner="w")
    with transaction(factory) as session:
        latest = job_records.latest_checkpoint(session, running_job)
        assert latest.step == 20
        assert rewritten.bytes == 31


def test_artifacts_replace_by_name(factory, running_job):
    with transaction(factory) as session:
        job_records.register_artifact(session, running_job, "model.safetensors", StoredObject("k1", 1, "a" * 64))
        job_records.register_artifact(session, running_job, "model.safetensors", StoredObject("k2", 2, "b" * 64))
        job_state.finish_job(session, running_job, "w", JobStatus.SUCCEEDED)
    with transaction(factory) as session:
        job = session.get(Job, running_job)
        assert [(a.name, a.store_key) for a in job.artifacts] == [("model.safetensors", "k2")]
