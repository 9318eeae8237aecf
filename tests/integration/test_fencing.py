"""Fencing, the hard way: a real worker paused (SIGSTOP) past its lease inside a checkpoint write, and
inside the retention step, while a second worker takes its job over; woken (SIGCONT), the stale worker
writes and deletes nothing, stops, and the job succeeds with the weights of an uninterrupted run.

The pause lands exactly where it should through a test-only hold (worker.holds: FT_TEST_HOLD_AT), which
makes the first worker wait there until the test has paused it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.db.models import Artifact, Checkpoint
from tests.integration.stack import Stack, job_body, running_stack

pytestmark = pytest.mark.slow

EPOCHS = 4  # retention removes a checkpoint by epoch 3 at the latest: the successor still has work to do
# A lease long enough that a worker starved by a loaded machine does not lose it by accident (the test pauses
# one on purpose), short enough that a takeover takes seconds.
LEASE_SECONDS = 8.0


@pytest.fixture(scope="module")
def stack(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        postgres_url, redis_url, tmp_path_factory.mktemp("stack"), FT_LEASE_SECONDS=str(LEASE_SECONDS)
    ) as built:
        yield built


def body(dataset_id: str) -> dict[str, Any]:
    """A deterministic spec on 6 images a class (2 steps an epoch): minutes even on a loaded machine."""
    spec = job_body(dataset_id, epochs=EPOCHS)
    spec["spec"]["data"]["subset_per_class"] = 6
    return spec


@pytest.fixture(scope="module")
def straight_weights(stack: Stack, dataset_id: str) -> bytes:
    """The weights of the same spec, run uninterrupted."""
    worker = stack.start_worker()
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=body(dataset_id)).json()["id"]
        assert stack.wait_for(job_id, {"succeeded", "failed"}, timeout=900)["status"] == "succeeded"
        weights = client.get(f"/v1/jobs/{job_id}/weights").content
    stack.stop_worker(worker)
    return weights


def wait_for_file(path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout}s"
        time.sleep(0.05)


def wait_for_text(path: Path, text: str, timeout: float) -> float:
    """Seconds until ``text`` shows in the file."""
    start = time.monotonic()
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() - start < timeout, f"{text!r} not in {path.name} after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def stored_files(stack: Stack, job_id: str) -> dict[str, str]:
    """Every object of the job in the stack's (local) store: key -> sha256 of its bytes."""
    root = stack.home / "artifacts"
    folder = root / "jobs" / job_id
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }


@pytest.mark.parametrize("point", ["checkpoint_write", "retention"])
def test_a_worker_paused_past_its_lease_inside_a_store_write_corrupts_nothing(
    stack: Stack, dataset_id: str, straight_weights: bytes, tmp_path: Path, point: str
) -> None:
    holds = {"FT_TEST_HOLD_AT": point, "FT_TEST_HOLD_DIR": str(tmp_path)}
    stale = stack.start_worker(env=holds)
    stale_log = stack.home / f"worker-{len(stack.workers) - 1}.log"
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=body(dataset_id)).json()["id"]
        wait_for_file(tmp_path / f"{point}.reached")  # the first worker waits inside the write
        os.killpg(stale.pid, signal.SIGSTOP)  # ... and now it is frozen there, past its lease
        try:
            stack.start_worker()
            deadline = time.monotonic() + 600
            while (job := client.get(f"/v1/jobs/{job_id}").json())["attempt"] < 2:  # taken over
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            # let the successor write a checkpoint of its own (or finish) before the stale worker wakes
            while not any(
                e["type"] == "checkpoint" and e["seq"] > started["seq"]
                for started in [e for e in stack.events(job_id) if "attempt 2 of" in e["message"]][:1]
                for e in stack.events(job_id)
            ):
                if client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded":
                    break
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            (tmp_path / f"{point}.release").touch()
            os.killpg(stale.pid, signal.SIGCONT)
        noticed = wait_for_text(stale_log, "lease lost", timeout=60)
        job = stack.wait_for(job_id, {"succeeded", "failed"}, timeout=900)
        wait_for_text(stale_log, "'lease lost'", timeout=60)  # the stale attempt's task has returned
        weights = client.get(f"/v1/jobs/{job_id}/weights").content

    assert job["status"] == "succeeded" and job["attempt"] == 2, job
    assert noticed < LEASE_SECONDS, f"the woken worker took {noticed:.1f}s to see its lease lost"
    assert hashlib.sha256(weights).hexdigest() == hashlib.sha256(straight_weights).hexdigest()

    # The store holds exactly what the database registered, each file with its recorded sha256: the
    # stale attempt's refused upload is gone, and no checkpoint of the successor was touched.
    engine = create_engine(stack.env["FT_DATABASE_URL"])
    try:
        with Session(engine) as session:
            kept = session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.deleted_at.is_(None))
            ).all()
            artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
            registered = {row.store_key: row.sha256 for row in [*kept, *artifacts]}
            successors = [row for row in kept if "/attempts/2-" in row.store_key]
    finally:
        engine.dispose()
    assert successors, "the successor registered no checkpoint"
    assert stored_files(stack, job_id) == registered
