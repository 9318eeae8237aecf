"""The job state machine on the real database: allowed transitions only, compare-and-set, events."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.clock import utcnow
from app.db.models import Job, JobEvent
from app.db.session import transaction
from app.errors import Conflict
from app.services import job_state
from app.services.job_state import ALLOWED, JobError
from app.statuses import TERMINAL_JOB_STATUSES, JobStatus
from tests.app.factories import make_job

QUEUED, RUNNING, CANCELLING = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED


@pytest.fixture
def job_id(settings, factory):
    with transaction(factory) as session:
        return make_job(session).id


def status_of(factory, job_id):
    with transaction(factory) as session:
        return session.get(Job, job_id)


def status_events(factory, job_id):
    with transaction(factory) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        return [(e.seq, e.type, (e.data or {}).get("from"), (e.data or {}).get("to")) for e in rows]


def run(factory, action, *args, **kwargs):
    with transaction(factory) as session:
        return action(session, *args, **kwargs)


def test_terminal_statuses_allow_no_transition():
    for status in TERMINAL_JOB_STATUSES:
        assert ALLOWED[status] == frozenset()


def test_claim_runs_the_job_once_and_records_it(factory, job_id):
    assert run(factory, job_state.claim_job, job_id, "w1", 30)
    job = status_of(factory, job_id)
    assert (job.status, job.owner, job.attempt) == (RUNNING, "w1", 1)
    assert job.lease_expires_at > utcnow() + timedelta(seconds=25)
    assert job.started_at is not None and job.attempt_started_at is not None
    assert not run(factory, job_state.claim_job, job_id, "w2", 30)
    assert not run(factory, job_state.claim_job, job_id, "w1", 30)  # a redelivered message changes nothing
    assert status_events(factory, job_id) == [(1, "status", None, "queued"), (2, "status", "queued", "running")]


def test_renew_lease_only_for_the_owner(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 1)
    before = status_of(factory, job_id).lease_expires_at
    assert run(factory, job_state.renew_lease, job_id, "w1", 60)
    assert status_of(factory, job_id).lease_expires_at > before
    assert not run(factory, job_state.renew_lease, job_id, "intruder", 60)


def test_cancel_while_running_tells_the_renewing_worker_to_stop(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 5)
    assert run(factory, job_state.request_cancel, job_id) == CANCELLING
    assert run(factory, job_state.request_cancel, job_id) == CANCELLING
    old = status_of(factory, job_id).lease_expires_at
    assert run(factory, job_state.renew_lease, job_id, "w1", 60) is False
    assert status_of(factory, job_id).lease_expires_at > old  # still extended: the worker stops cleanly
    assert not run(factory, job_state.finish_job, job_id, "other", CANCELLED)
    assert run(factory, job_state.finish_job, job_id, "w1", CANCELLED)
    job = status_of(factory, job_id)
    assert (job.status, job.owner, job.lease_expires_at) == (CANCELLED, None, None)
    assert job.finished_at is not None and job.cancel_requested_at is not None
    assert [e[2:] for e in status_events(factory, job_id)] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "cancelling"),
        ("cancelling", "cancelled"),
    ]


def test_cancel_of_a_queued_job_is_immediate_and_it_can_no_longer_be_claimed(factory, job_id):
    assert run(factory, job_state.request_cancel, job_id) == CANCELLED
    assert not run(factory, job_state.claim_job, job_id, "w1", 30)
    assert status_of(factory, job_id).status == CANCELLED


@pytest.mark.parametrize("final", [SUCCEEDED, FAILED, CANCELLED])
def test_terminal_statuses_never_change(factory, job_id, final):
    run(factory, job_state.claim_job, job_id, "w1", 30)
    error = JobError("non_finite_loss", "the loss became nan") if final == FAILED else None
    assert run(factory, job_state.finish_job, job_id, "w1", final, error)
    assert not run(factory, job_state.finish_job, job_id, "w1", SUCCEEDED)
    assert not run(factory, job_state.claim_job, job_id, "w2", 30)
    assert not run(factory, job_state.renew_lease, job_id, "w1", 30)
    assert run(factory, job_state.release_job, job_id, "w1") is None
    assert run(factory, job_state.requeue_expired_leases, utcnow() + timedelta(days=1)) == []
    if final == CANCELLED:
        assert run(factory, job_state.request_cancel, job_id) == CANCELLED
    else:
        with pytest.raises(Conflict):
            run(factory, job_state.request_cancel, job_id)
    job = status_of(factory, job_id)
    assert job.status == final
    assert (job.error_code, job.error_message) == ((error.code, error.message) if error else (None, None))


def test_finish_checks_its_arguments(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 30)
    with pytest.raises(ValueError, match="final status"):
        run(factory, job_state.finish_job, job_id, "w1", RUNNING)
    with pytest.raises(ValueError, match="needs an error"):
        run(factory, job_state.finish_job, job_id, "w1", FAILED)


def test_a_lost_lease_requeues_then_fails_with_worker_lost(factory, settings):
    with transaction(factory) as session:
        job_id = make_job(session, max_attempts=2).id
    for attempt in (1, 2):
        assert run(factory, job_state.claim_job, job_id, f"w{attempt}", 0.01)
        assert status_of(factory, job_id).attempt == attempt
        time.sleep(0.05)
        requeued = run(factory, job_state.requeue_expired_leases)
        job = status_of(factory, job_id)
        if attempt == 1:
            assert requeued == [job_id]
            assert (job.status, job.owner) == (QUEUED, None)
            assert not run(factory, job_state.renew_lease, job_id, "w1", 30)  # the dead worker's lease is gone
        else:
            assert requeued == []
            assert (job.status, job.error_code) == (FAILED, "worker_lost")
            assert "attempt 2 of 2" in job.error_message
    assert not run(factory, job_state.claim_job, job_id, "w3", 30)


def test_a_renewed_lease_is_not_reaped(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 60)
    assert run(factory, job_state.requeue_expired_leases) == []
    assert status_of(factory, job_id).status == RUNNING


def test_a_cancelling_job_whose_worker_died_ends_cancelled(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 0.01)
    run(factory, job_state.request_cancel, job_id)
    time.sleep(0.05)
    assert run(factory, job_state.requeue_expired_leases) == []
    assert status_of(factory, job_id).status == CANCELLED


def test_release_hands_the_attempt_back(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 30)
    assert run(factory, job_state.release_job, job_id, "w1") == QUEUED
    job = status_of(factory, job_id)
    assert (job.status, job.attempt, job.owner) == (QUEUED, 0, None)
    assert run(factory, job_state.claim_job, job_id, "w2", 30)
    assert status_of(factory, job_id).attempt == 1


def test_fail_queued_job(factory, job_id):
    assert run(factory, job_state.fail_queued_job, job_id, JobError("dataset_missing", "gone"))
    assert status_of(factory, job_id).status == FAILED
    assert not run(factory, job_state.fail_queued_job, job_id, JobError("x", "y"))


def test_two_concurrent_claims_exactly_one_wins(factory, job_id):
    """The first claimer holds its transaction open while the second claims: the second must wait for the
    row (PostgreSQL) or the write lock (SQLite) and then find the job taken."""
    first_updated = threading.Event()
    results: dict[str, bool] = {}

    def first() -> None:
        with transaction(factory) as session:
            results["first"] = job_state.claim_job(session, job_id, "first", 30)
            first_updated.set()
            time.sleep(0.3)  # the second claim runs while this transaction is still open

    def second() -> None:
        first_updated.wait(5)
        with transaction(factory) as session:
            results["second"] = job_state.claim_job(session, job_id, "second", 30)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"first": True, "second": False}
    job = status_of(factory, job_id)
    assert (job.owner, job.attempt) == ("first", 1)
    assert [e[3] for e in status_events(factory, job_id)] == ["queued", "running"]


def test_many_racing_claims_one_winner(factory, settings):
    with transaction(factory) as session:
        job_id = make_job(session).id
    start = threading.Barrier(6)
    wins: list[str] = []

    def claim(owner: str) -> None:
        start.wait(5)
        with transaction(factory) as session:
            if job_state.claim_job(session, job_id, owner, 30):
                wins.append(owner)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(wins) == 1
    assert status_of(factory, job_id).owner == wins[0]


# --- pause and resume -----------------------------------------------------------------------------

PAUSING, PAUSED = JobStatus.PAUSING, JobStatus.PAUSED


def test_pausing_a_queued_job_holds_it_until_it_is_resumed(factory, job_id):
    assert run(factory, job_state.request_pause, job_id) == PAUSED
    assert run(factory, job_state.request_pause, job_id) == PAUSED  # again: nothing changes
    assert not run(factory, job_state.claim_job, job_id, "w1", 30)  # its task, when it comes, finds nothing
    assert run(factory, job_state.resume_job, job_id) is True
    assert run(factory, job_state.resume_job, job_id) is False  # a repeated resume changes nothing
    job = status_of(factory, job_id)
    assert (job.status, job.attempt, job.dispatched_at) == (QUEUED, 0, None)  # the sweep re-sends it if need be
    assert run(factory, job_state.claim_job, job_id, "w1", 30)
    assert status_events(factory, job_id)[1:] == [
        (2, "status", "queued", "paused"),
        (3, "status", "paused", "queued"),
        (4, "status", "queued", "running"),
    ]


def test_a_running_job_pauses_through_its_worker_and_the_attempt_is_handed_back(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 5)
    assert run(factory, job_state.request_pause, job_id) == PAUSING
    assert run(factory, job_state.request_pause, job_id) == PAUSING
    old = status_of(factory, job_id).lease_expires_at
    assert run(factory, job_state.renew_lease, job_id, "w1", 60) is False  # tells the worker to stop
    assert status_of(factory, job_id).lease_expires_at > old  # still extended while it checkpoints
    with pytest.raises(Conflict, match="still pausing"):
        run(factory, job_state.resume_job, job_id)
    assert run(factory, job_state.release_job, job_id, "w1") == PAUSED
    job = status_of(factory, job_id)
    assert (job.status, job.attempt, job.owner, job.lease_expires_at) == (PAUSED, 0, None, None)
    assert run(factory, job_state.resume_job, job_id) is True
    assert run(factory, job_state.claim_job, job_id, "w2", 30)
    assert status_of(factory, job_id).attempt == 1
    assert [e[2:] for e in status_events(factory, job_id)][2:] == [
        ("running", "pausing"),
        ("pausing", "paused"),
        ("paused", "queued"),
        ("queued", "running"),
    ]


def test_cancel_works_on_a_paused_and_on_a_pausing_job(factory, settings):
    with transaction(factory) as session:
        paused, pausing = make_job(session).id, make_job(session).id
    run(factory, job_state.request_pause, paused)
    assert run(factory, job_state.request_cancel, paused) == CANCELLED
    run(factory, job_state.claim_job, pausing, "w1", 30)
    run(factory, job_state.request_pause, pausing)
    assert run(factory, job_state.request_cancel, pausing) == CANCELLING
    assert run(factory, job_state.release_job, pausing, "w1") == CANCELLED  # the cancel won
    with pytest.raises(Conflict, match="only a paused job can be resumed"):
        run(factory, job_state.resume_job, pausing)


def test_a_job_that_ends_while_pausing_keeps_its_ending(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 30)
    run(factory, job_state.request_pause, job_id)
    assert run(factory, job_state.finish_job, job_id, "w1", SUCCEEDED)
    with pytest.raises(Conflict, match="already succeeded"):
        run(factory, job_state.request_pause, job_id)


def test_a_cancelling_job_cannot_be_paused(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 30)
    run(factory, job_state.request_cancel, job_id)
    with pytest.raises(Conflict, match="being cancelled"):
        run(factory, job_state.request_pause, job_id)


def test_a_pausing_job_whose_worker_died_ends_paused(factory, job_id):
    run(factory, job_state.claim_job, job_id, "w1", 0.01)
    run(factory, job_state.request_pause, job_id)
    time.sleep(0.05)
    assert run(factory, job_state.requeue_expired_leases) == []
    job = status_of(factory, job_id)
    assert (job.status, job.owner) == (PAUSED, None)
