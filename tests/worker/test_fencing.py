"""Fencing of a running attempt's writes, at the publisher and the runner: a stale attempt's checkpoint
is refused and its upload deleted, its retention deletes nothing, and a resume takes only a registered
checkpoint whose bytes match their sha256. (The same with real worker processes paused by SIGSTOP:
tests/integration/test_fencing.py.)"""

from __future__ import annotations

import hashlib
import threading

from sqlalchemy import update

from app.db.models import Job
from app.db.session import transaction
from app.repositories import job_records
from app.services.job_state import claim_job
from app.store import StoredObject
from tests.worker.conftest import job_spec, read, submit, upload_ready_dataset
from training.callbacks import CheckpointInfo
from worker.publisher import Checkpoint, EventPublisher, Fence, checkpoint_key
from worker.runner import JobRunner


def staged(tmp_path, name: str, body: bytes):
    path = tmp_path / "staging" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def info(tmp_path, name: str, step: int, removed=()) -> CheckpointInfo:
    return CheckpointInfo(tmp_path / name, epoch=step, step=step, is_best=False, mid_epoch=False, metrics={},
                          removed=tuple(tmp_path / r for r in removed))  # fmt: skip


def test_a_stale_attempt_writes_and_deletes_nothing(services, colour_archive, tmp_path):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    assert read(services, claim_job, job_id, "old:1:aaaa1111", 60)
    fence = Fence(job_id, "old:1:aaaa1111", 1)
    lost = threading.Event()
    publisher = EventPublisher(services, fence, on_lease_lost=lost.set)
    publisher.start()
    try:
        publisher.put(Checkpoint(info(tmp_path, "epoch-1.pt", 1), staged(tmp_path, "epoch-1.pt", b"one")))
        publisher.drain()
        first = read(services, job_records.latest_checkpoint, job_id)
        assert first.store_key == checkpoint_key(fence, "epoch-1.pt") == f"{fence.prefix}/checkpoints/epoch-1.pt"
        assert "/attempts/1-aaaa1111/" in first.store_key

        with transaction(services.factory) as session:  # the reaper and a new claim took the job over
            session.execute(update(Job).where(Job.id == job_id).values(owner="new:2:bbbb2222", attempt=2))
        late = info(tmp_path, "epoch-2.pt", 2, removed=["epoch-1.pt"])
        publisher.put(Checkpoint(late, staged(tmp_path, "epoch-2.pt", b"two")))
        publisher.drain()
    finally:
        publisher.close()
    assert lost.is_set() and publisher.lease_lost
    kept = read(services, job_records.kept_checkpoints, job_id)
    assert [c.store_key for c in kept] == [first.store_key]  # not registered, and epoch 1 not marked deleted
    assert services.store.stat(checkpoint_key(fence, "epoch-2.pt")) is None  # the refused upload is gone
    with services.store.open(first.store_key) as file:
        assert file.read() == b"one"  # the retention deleted nothing


def test_a_resume_takes_the_newest_checkpoint_whose_sha256_matches(services, colour_archive, tmp_path):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    runner = JobRunner(services, job_id, threading.Event())
    runner.run_dir = tmp_path / "attempt"
    good = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-1.pt", [b"good"])
    bad = services.store.put(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-2.pt", [b"tampered"])
    recorded_bad = StoredObject(bad.key, bad.size, hashlib.sha256(b"as written").hexdigest())
    gone = StoredObject(f"jobs/{job_id}/attempts/1-x/checkpoints/epoch-3.pt", 1, good.sha256)

    resume_from, warnings = runner._resume_point([gone, recorded_bad, good])

    assert resume_from is not None and resume_from.read_bytes() == b"good"
    assert "epoch-3.pt is missing" in warnings[0] and "epoch-2.pt does not match" in warnings[1]
    assert not (runner.run_dir / "checkpoints" / "epoch-2.pt").exists()
    assert runner._resume_point([recorded_bad]) == (None, [warnings[1]])
