"""The service's metrics at /metrics, from the real database, broker and heartbeat store of each backend
(SQLite with the file broker and file heartbeats; PostgreSQL with Redis)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.clock import utcnow
from app.db.models import Job
from app.db.session import transaction
from app.dispatch.names import CPU_QUEUE, GPU_QUEUE, TRAIN_JOB
from app.main import create_app
from app.observability.heartbeats import heartbeats_for
from app.services.job_records import record_epoch_metrics, record_step_metrics
from app.services.job_state import claim_job, finish_job
from app.statuses import JobStatus
from tests.app.factories import make_job
from tests.app.helpers import broker_messages
from training.callbacks import StepMetrics

pytestmark = pytest.mark.anyio


async def scrape(client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def step(images_per_second: float, number: int = 1) -> dict:
    return StepMetrics(
        epoch=1,
        step=number,
        step_in_epoch=number,
        steps_per_epoch=10,
        total_steps=30,
        loss=1.0,
        lr=0.01,
        grad_norm=1.0,
        images_per_second=images_per_second,
        elapsed_seconds=1.0,
    ).to_dict()


async def test_jobs_are_counted_by_status(client, factory):
    with transaction(factory) as session:
        make_job(session)
        running, done, failed = make_job(session), make_job(session), make_job(session)
        for job in (running, done, failed):
            assert claim_job(session, job.id, f"worker-{job.id}", 30)
        finish_job(session, done.id, f"worker-{done.id}", JobStatus.SUCCEEDED)
    samples = await scrape(client)
    counts = {status: value(samples, "finetune_jobs", status=status) for status in JobStatus}
    assert counts == {
        "queued": 1,
        "running": 2,
        "cancelling": 0,
        "pausing": 0,
        "paused": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "pruned": 0,
    }
    assert value(samples, "finetune_metrics_source_up", source="database") == 1


async def test_queue_depth_counts_the_messages_waiting_on_each_queue(app, client):
    queue = app.state.queue
    queue.send_train_job("ftjob_a")
    queue.send_train_job("ftjob_b")
    queue.celery.send_task(TRAIN_JOB, args=["ftjob_c"], queue=GPU_QUEUE, priority=9)  # a priority list in Redis
    queue.send_validate_dataset("ds_a")
    samples = await scrape(client)
    assert value(samples, "finetune_queue_depth", queue=GPU_QUEUE) == 3
    assert value(samples, "finetune_queue_depth", queue=CPU_QUEUE) == 1

    assert len(broker_messages(app, GPU_QUEUE)) == 3  # a worker takes them
    samples = await scrape(client)
    assert value(samples, "finetune_queue_depth", queue=GPU_QUEUE) == 0
    assert value(samples, "finetune_queue_depth", queue=CPU_QUEUE) == 1
    assert value(samples, "finetune_metrics_source_up", source="broker") == 1


async def test_job_durations_are_a_histogram_of_finished_jobs(client, factory):
    start = utcnow() - timedelta(days=1)
    ended = [(JobStatus.SUCCEEDED, 30.0), (JobStatus.SUCCEEDED, 4000.0), (JobStatus.FAILED, 100.0)]
    with transaction(factory) as session:
        for status, seconds in ended:
            job = make_job(session)
            job.status, job.started_at, job.finished_at = status, start, start + timedelta(seconds=seconds)
        never_started = make_job(session)  # cancelled while queued: no duration
        never_started.status, never_started.finished_at = JobStatus.CANCELLED, start
        running = make_job(session)
        running.status, running.started_at = JobStatus.RUNNING, start
    samples = await scrape(client)

    def bucket(status: str, le: str) -> float | None:
        return value(samples, "finetune_job_duration_seconds_bucket", status=status, le=le)

    assert [bucket("succeeded", le) for le in ("60.0", "3600.0", "7200.0", "+Inf")] == [1, 1, 2, 2]
    assert value(samples, "finetune_job_duration_seconds_count", status="succeeded") == 2
    assert value(samples, "finetune_job_duration_seconds_sum", status="succeeded") == pytest.approx(4030, abs=0.01)
    assert [bucket("failed", le) for le in ("60.0", "300.0", "+Inf")] == [0, 1, 1]
    assert value(samples, "finetune_job_duration_seconds_count", status="cancelled") is None


async def test_throughput_of_running_jobs_comes_from_their_latest_metrics(client, factory):
    with transaction(factory) as session:
        stepping, resumed, starting, done = (make_job(session) for _ in range(4))
        for job in (stepping, resumed, starting, done):
            assert claim_job(session, job.id, "w", 30)
        record_step_metrics(session, stepping.id, step(100.0, 1))
        record_step_metrics(session, stepping.id, step(250.0, 2))
        # An earlier attempt stepped; this attempt has finished an epoch but logged no step yet.
        record_step_metrics(session, resumed.id, step(999.0))
        record_epoch_metrics(session, resumed.id, {"epoch": 2, "images_per_second": 77.0, "train_loss": 0.5})
        record_step_metrics(session, done.id, step(500.0))
        finish_job(session, done.id, "w", JobStatus.SUCCEEDED)
    with transaction(factory) as session:
        job = session.get(Job, resumed.id)
        job.attempt_started_at = utcnow() + timedelta(seconds=1)
        job.attempt_start_epoch = 1
    samples = await scrape(client)
    assert value(samples, "finetune_images_per_second") == 250.0 + 77.0
    assert not [labels for (_name, labels), _ in samples.items() if "job_id" in dict(labels)]  # no job ids


async def test_worker_heartbeats_and_the_workers_alive(client, settings):
    store = heartbeats_for(settings)
    now = store.now()
    store.beat("gpu0@host-a")
    store.beat("gpu1@host-a", at=now - 120)  # silent for two minutes: down
    store.beat("cpu@host-b", at=now - 7200)  # dead for two hours: forgotten
    samples = await scrape(client)
    assert value(samples, "finetune_worker_last_heartbeat_seconds", worker="gpu0@host-a") == pytest.approx(now, abs=5)
    assert value(samples, "finetune_worker_last_heartbeat_seconds", worker="gpu1@host-a") == pytest.approx(now - 120)
    assert value(samples, "finetune_worker_last_heartbeat_seconds", worker="cpu@host-b") is None
    assert value(samples, "finetune_workers_alive") == 1

    store.forget("gpu0@host-a")  # stopped cleanly
    samples = await scrape(client)
    assert value(samples, "finetune_worker_last_heartbeat_seconds", worker="gpu0@host-a") is None
    assert value(samples, "finetune_workers_alive") == 0
    store.close()


async def test_a_source_that_is_down_leaves_the_others_answering(settings):
    broken = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    app = create_app(broken)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            samples = await scrape(client)
    finally:
        app.state.queue.close()
        app.state.engine.dispose()
    assert value(samples, "finetune_metrics_source_up", source="database") == 0
    assert value(samples, "finetune_jobs", status="queued") is None
    assert value(samples, "finetune_metrics_source_up", source="broker") == 1
    assert value(samples, "finetune_queue_depth", queue=GPU_QUEUE) == 0
    assert value(samples, "finetune_metrics_source_up", source="heartbeats") == 1
