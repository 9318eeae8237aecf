"""Fencing of a running attempt's writes, at the publisher and the runner: a stale attempt's checkpoint
is refused and its upload deleted, its retention deletes nothing, and a resume takes only a registered
checkpoint whose bytes match their sha256. (The same with real worker processes paused by SIGSTOP:
tests/integration/test_fencing.py.)"""

from __future__ import annotations

import hashlib
import threading
import time

from sqlalchemy import update

from app.db.models import Job
from app.db.session import transaction
from app.repositories import job_records
from app.services.job_state import claim_job
from app.store import StoredObject
from tests.worker.conftest import job_spec, read, submit, upload_ready_dataset
from training.callbacks import CheckpointInfo
from worker.publisher import Checkpoint, EventPublisher, Fence, checkpoint_key
from worker.runner import JobRunner, Registered


def staged(tmp_path, name: str, body: bytes):
    path = tmp_path / "staging" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def info(tmp_path, name: str, step: int, removed=()) -> CheckpointInfo:
    return CheckpointInfo(tmp_path / name, epoch=step, step=step, is_best=False, mid_epoch=False, metrics={},
                          removed=tuple(tmp_path / r for r in removed))  # fmt: skip


def take_over(services, job_id: str) -> None:
    """What the reaper and a new claim do to a job whose worker froze past its lease."""
    with transaction(services.factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(owner="new:2:bbbb2222", attempt=2))


def wait_held(tmp_path, point: str) -> None:
    deadline = time.monotonic() + 60
    while not (tmp_path / f"{point}.reached").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_checkpoint_uploaded_by_an_attempt_that_lost_the_job_is_refused_and_deleted(
    services, colour_archive, monkeypatch, tmp_path
):
    monkeypatch.setenv("FT_TEST_HOLD_AT", "checkpoint_write")
    monkeypatch.setenv("FT_TEST_HOLD_DIR", str(tmp_path))
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    assert read(services, claim_job, job_id, "old:1:aaaa1111", 60)
    fence = Fence(job_id, "old:1:aaaa1111", 1)
    lost = threading.Event()
    publisher = EventPublisher(services, fence, on_lease_lost=lost.set)
    publisher.start()
    try:
        publisher.put(Checkpoint(info(tmp_path, "epoch-1.pt", 1), staged(tmp_path, "epoch-1.pt", b"one")))
        wait_held(tmp_path, "checkpoint_write")  # uploaded, not registered yet
        key = checkpoint_key(fence, "epoch-1.pt")
        assert key == f"jobs/{job_id}/attempts/1-aaaa1111/checkpoints/epoch-1.pt" and services.store.stat(key)
        take_over(services, job_id)
        (tmp_path / "checkpoint_write.release").touch()
        publisher.drain()
    finally:
        publisher.close()
    assert lost.is_set() and publisher.lease_lost
    assert read(services, job_records.kept_checkpoints, job_id) == []
    assert services.store.stat(key) is None  # the refused upload is gone


def test_a_retention_step_of_an_attempt_that_lost_the_job_deletes_nothing(
    services, colour_archive, monkeypatch, tmp_path
):
    monkeypatch.setenv("FT_TEST_HOLD_AT", "retention")
    monkeypatch.setenv("FT_TEST_HOLD_DIR", str(tmp_path))
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    assert read(services, claim_job, job_id, "old:1:aaaa1111", 60)
    lost = threading.Event()
    publisher = EventPublisher(services, Fence(job_id, "old:1:aaaa1111", 1), on_lease_lost=lost.set)
    publisher.start()
    try:
        publisher.put(Checkpoint(info(tmp_path, "epoch-1.pt", 1), staged(tmp_path, "epoch-1.pt", b"one")))
        later = info(tmp_path, "epoch-2.pt", 2, removed=["epoch-1.pt"])
        publisher.put(Checkpoint(later, staged(tmp_path, "epoch-2.pt", b"two")))
        wait_held(tmp_path, "retention")  # epoch 2 registered; epoch 1 about to be deleted
        take_over(services, job_id)
        (tmp_path / "retention.release").touch()
        publisher.drain()
    finally:
        publisher.close()
    assert lost.is_set() and publisher.lease_lost
    kept = read(services, job_records.kept_checkpoints, job_id)
    assert [c.step for c in kept] == [1, 2]  # epoch 1 is not marked deleted...
    with services.store.open(kept[0].store_key) as file:
        assert file.read() == b"one"  # ... and its file is still there


def test_a_resume_takes_the_newest_checkpoint_whose_sha256_matches(services, colour_archive, tmp_path):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    runner = JobRunner(services, job_id, threading.Event())
    runner.run_dir = tmp_path / "attempt"
    good = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-1.pt", [b"good"])
    bad = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-2.pt", [b"tampered"])
    recorded_bad = StoredObject(bad.key, bad.size, hashlib.sha256(b"as written").hexdigest())
    gone = StoredObject(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-3.pt", 1, good.sha256)

    resume_from, warnings = runner._resume_point([Registered(s, 1, False) for s in (gone, recorded_bad, good)])

    assert resume_from is not None and resume_from.read_bytes() == b"good"
    assert "epoch-3.pt is missing" in warnings[0] and "epoch-2.pt does not match" in warnings[1]
    assert not (runner.run_dir / "checkpoints" / "epoch-2.pt").exists()
    assert runner._resume_point([Registered(recorded_bad, 2, False)]) == (None, [warnings[1]])


def test_a_resume_fetches_the_best_checkpoint_before_it_too(services, colour_archive, tmp_path):
    """The engine reloads the best epoch's checkpoint at the end: this attempt's folder must have it."""
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    runner = JobRunner(services, job_id, threading.Event())
    runner.run_dir = tmp_path / "attempt"
    best = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-1.pt", [b"best"])
    last = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-2.pt", [b"last"])
    resume_from, warnings = runner._resume_point([Registered(last, 2, False), Registered(best, 1, True)])
    assert resume_from == runner.run_dir / "checkpoints" / "epoch-2.pt" and not warnings
    assert (runner.run_dir / "checkpoints" / "epoch-1.pt").read_bytes() == b"best"
