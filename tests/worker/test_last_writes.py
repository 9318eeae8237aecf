"""An attempt's last writes (its artifacts' registration, the job's end, a failure) survive a database
outage at the very end of a job, fenced by the attempt; and a job that ends hands its project's running
slot to the project's next waiting job at once, without waiting for the periodic sweep.

The outage is real: a private PostgreSQL cluster (tests/integration/test_outages.py) stopped after the
publisher has drained and started again a few seconds later, while the runner's writes retry."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from app.context import Runtime
from app.db.migrate import upgrade
from app.db.models import Job
from app.db.session import transaction
from app.dispatch.names import GPU_QUEUE
from app.repositories import job_records, jobs
from app.services.job_state import claim_job
from app.settings import Settings
from app.statuses import EventType, JobStatus
from tests.app.factories import make_job
from training import artifacts
from worker.lease import LeaseKeeper
from worker.publisher import EventPublisher, Fence
from worker.runner import JobRunner

OUTAGE_SECONDS = 4.0


def sent(runtime: Runtime) -> list[str]:
    """Take the train tasks waiting on the broker's GPU queue: their job ids."""
    taken = []
    with runtime.queue.celery.connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(GPU_QUEUE, no_ack=True)) is not None:
            taken.append(message.decode()[0][0])
    return taken


def claimed_runner(runtime: Runtime, job_id: str, n: int) -> JobRunner:
    """A runner that holds the job's attempt (as ``_claim_and_attempt`` leaves it), its training done."""
    runner = JobRunner(runtime, job_id, threading.Event(), worker_name=f"w{n}")
    with transaction(runtime.factory) as session:
        assert claim_job(session, job_id, runner.owner, runtime.settings.lease_seconds)
    runner.fence = Fence(job_id, runner.owner, 1)
    runner.keeper = LeaseKeeper(runtime.factory, job_id, runner.owner, 1, runtime.settings)  # never started
    runner.run_dir.mkdir(parents=True, exist_ok=True)
    for name in artifacts.PUBLISHED:
        (runner.run_dir / name).write_bytes(f"{job_id} {name}".encode())
    return runner


def job_row(runtime: Runtime, job_id: str) -> Any:
    with transaction(runtime.factory) as session:
        job = jobs.get_any(session, job_id)
        session.expunge(job)
        return job


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    from tests.integration.test_outages import PG_BIN, PrivatePostgres

    if shutil.which("runuser") is None or not PG_BIN.joinpath("initdb").exists():
        pytest.skip("needs initdb and runuser to start a private PostgreSQL cluster")
    server = PrivatePostgres()
    yield server
    server.remove()


@pytest.fixture
def private(postgres: Any, tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(
        home=tmp_path / "home",
        database_url=postgres.url,
        auth_enabled=False,  # the file broker under home: the outage is the database's alone
        db_connect_timeout_seconds=1,
        db_outage_grace_seconds=120,
        project_max_running_jobs=2,
    )
    upgrade(settings)
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.close()


def test_the_last_writes_of_a_job_wait_out_a_database_outage(private: Runtime, postgres: Any) -> None:
    with transaction(private.factory) as session:
        done, failing, waiting = (make_job(session, project="p").id for _ in range(3))
    succeeded, failed = claimed_runner(private, done, 1), claimed_runner(private, failing, 2)
    publisher = EventPublisher(private, failed.fence, on_lease_lost=lambda: None)  # drained: nothing queued
    results: dict[str, str] = {}

    def succeed() -> None:
        succeeded._publish_artifacts(None)
        results[done] = succeeded._finish(JobStatus.SUCCEEDED, final_metrics={"accuracy": 0.5})

    def fail() -> None:
        results[failing] = failed._fail(publisher, failed.keeper, "internal", "internal error: boom")

    postgres.stop()
    try:
        threads = [threading.Thread(target=succeed), threading.Thread(target=fail)]
        for thread in threads:
            thread.start()
        time.sleep(OUTAGE_SECONDS)
        retrying = [thread.is_alive() for thread in threads]  # not given up, and not finished either
    finally:
        postgres.start()
    assert retrying == [True, True]
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert results == {done: "succeeded", failing: "failed (internal)"}
    ended = job_row(private, done)
    assert (ended.status, ended.attempt, ended.final_metrics) == (JobStatus.SUCCEEDED, 1, {"accuracy": 0.5})
    with transaction(private.factory) as session:
        names = {artifact.name for artifact in job_records.artifacts(session, done)}
        errors = [e for e in job_records.events_after(session, failing, 0, 1000) if e.type == EventType.ERROR]
    assert names >= set(artifacts.PUBLISHED)
    assert len(errors) == 1  # written once, through the retries
    assert (job_row(private, failing).status, job_row(private, failing).error_code) == (JobStatus.FAILED, "internal")
    # Both ends freed their project's slots: its waiting job went to the broker at once.
    assert sent(private) == [waiting]


def test_past_the_grace_the_last_write_gives_up(private: Runtime, postgres: Any) -> None:
    private.settings.db_outage_grace_seconds = 1.0  # the runtime's own settings object
    with transaction(private.factory) as session:
        job_id = make_job(session, project="p").id
    runner = claimed_runner(private, job_id, 1)
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError):
            runner._finish(JobStatus.SUCCEEDED)
        assert time.monotonic() - started < 30
    finally:
        postgres.start()
    assert job_row(private, job_id).status == JobStatus.RUNNING  # left for the reaper, once its lease ran out


def test_the_last_writes_are_fenced_by_the_attempt(private: Runtime) -> None:
    with transaction(private.factory) as session:
        job_id = make_job(session, project="p").id
    runner = claimed_runner(private, job_id, 1)
    with transaction(private.factory) as session:  # the reaper requeued it and another worker claimed it
        session.execute(update(Job).where(Job.id == job_id).values(owner="new:2:bbbb2222", attempt=2))
    publisher = EventPublisher(private, runner.fence, on_lease_lost=lambda: None)
    assert runner._fail(publisher, runner.keeper, "internal", "boom") == "lease lost"
    assert runner._finish(JobStatus.SUCCEEDED) == "lease lost"
    job = job_row(private, job_id)
    assert (job.status, job.owner, job.attempt) == (JobStatus.RUNNING, "new:2:bbbb2222", 2)
    with transaction(private.factory) as session:
        assert [e for e in job_records.events_after(session, job_id, 0, 1000) if e.type == EventType.ERROR] == []


def test_a_job_that_ends_hands_its_slot_to_its_projects_next_waiting_job_at_once(services: Runtime) -> None:
    services.settings.project_max_running_jobs = 1  # the runtime's own settings object
    with transaction(services.factory) as session:
        first, paused, second = (make_job(session, project="p").id for _ in range(3))
        elsewhere = make_job(session, project="q").id  # another project's, never dispatched (no sweep here)
    runner = claimed_runner(services, first, 1)
    assert runner._finish(JobStatus.SUCCEEDED) == "succeeded"
    # The oldest waiting job of the project, with no sweep run. On PostgreSQL the pass then looks again at
    # every project (a pass it found running may have left another's job: app.dispatch.admission), and sends
    # the other project's waiting job too; on SQLite no pass is ever found running, and the pass keeps to p.
    postgres = services.factory.kw["bind"].dialect.name == "postgresql"
    assert sent(services) == ([paused, elsewhere] if postgres else [paused])
    pausing = claimed_runner(services, paused, 2)
    with transaction(services.factory) as session:
        session.execute(update(Job).where(Job.id == paused).values(status=JobStatus.PAUSING))
    assert pausing._release() == "released (paused)"
    assert sent(services) == [second]  # a paused job frees its slot too
    assert (job_row(services, elsewhere).dispatched_at is not None) == postgres
