"""``Client`` against the real API: every method's typed answer, the API's errors as typed exceptions,
pagination through every page, a streamed upload, idempotent creates and retries."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import httpx
import pytest

from app.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Retry,
    Unauthorized,
)
from app.client import models as m
from app.statuses import JobStatus
from tests.app.client import worker_side
from tests.app.client.server import MAX_UPLOAD_BYTES, MB, free_port
from tests.app.helpers import image_tree, zip_bytes


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def spec_for(dataset_id: str, epochs: int = 2) -> dict:
    return {
        "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset_id, "image_size": 32, "batch_size": 4},
        "training": {"epochs": epochs},
    }


def test_service_and_reference_endpoints_answer_typed_objects(api):
    assert api.healthz() == m.Health(status="ok")
    ready = api.readyz()
    assert isinstance(ready, m.Readiness) and ready.status == "ready" and ready.checks["database"] == "ok"
    assert api.spec_schema()["title"] == "Spec"
    backbones = api.backbones.list()
    assert isinstance(backbones, m.BackboneList) and "resnet18" in {b.name for b in backbones.data}
    resnet = api.backbones.get("resnet18")
    assert isinstance(resnet, m.Backbone) and resnet.family == "resnet"


def test_dataset_methods_answer_typed_objects(api, tmp_path):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(zip_bytes(image_tree()))
    uploaded = api.datasets.upload(archive, name="my pets")
    assert isinstance(uploaded, m.Dataset)
    assert uploaded.status == m.DatasetStatus.VALIDATING and uploaded.name == "my pets"
    assert uploaded.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert api.datasets.get(uploaded.id) == uploaded
    page = api.datasets.list(status="validating")
    assert isinstance(page, m.DatasetList) and [d.id for d in page.data] == [uploaded.id]
    deleted = api.datasets.delete(uploaded.id)
    assert deleted == m.Deleted(id=uploaded.id, object="dataset.deleted")
    with pytest.raises(NotFound):
        api.datasets.get(uploaded.id)


def test_job_methods_answer_typed_objects(api, api_server, worker_factory):
    dataset_id = worker_side.ready_dataset(worker_factory)
    job = api.jobs.create(spec_for(dataset_id), name="first", metadata={"team": "vision"})
    assert isinstance(job, m.Job) and isinstance(job.spec, m.Spec)
    assert job.status == JobStatus.QUEUED and job.spec.data.dataset == dataset_id
    assert job.spec.regularization.weight_decay_mode == "l2"  # the resolved spec: defaults filled in
    assert api.jobs.get(job.id) == job
    listed = api.jobs.list(status=["queued", "running"], metadata={"team": "vision"})
    assert isinstance(listed, m.JobList) and [j.id for j in listed.data] == [job.id]

    worker_side.run(worker_factory, job.id)
    worker_side.checkpoint(worker_factory, api_server, job.id, epoch=2)
    worker_side.publish(worker_factory, api_server, job.id, "model.safetensors", b"weights")

    finished = api.jobs.get(job.id)
    assert finished.status == JobStatus.SUCCEEDED and finished.is_terminal
    assert finished.metrics.final == {"val_loss": 0.6, "val_acc": 0.65, "test_loss": 0.7, "test_acc": 0.6}
    events = api.jobs.events(job.id, type="epoch")
    assert isinstance(events, m.EventPage) and [e.data["epoch"] for e in events.data] == [1, 2]
    epochs = api.jobs.metrics(job.id)
    assert isinstance(epochs, m.EpochTable) and [row.epoch for row in epochs.data] == [1, 2]
    checkpoints = api.jobs.checkpoints(job.id)
    assert isinstance(checkpoints, m.CheckpointList) and checkpoints.data[0].is_best
    artifacts = api.jobs.artifacts(job.id)
    assert isinstance(artifacts, m.ArtifactList)
    assert [a.name for a in artifacts.data] == ["model.safetensors"]
    assert artifacts.data[0].sha256 == hashlib.sha256(b"weights").hexdigest()


def test_validate_answers_the_dry_run(api, backend, worker_factory):
    if backend.name != "sqlite":
        pytest.skip("the dry run makes the server import torch (seconds): one backend is enough for a read")
    dataset_id = worker_side.ready_dataset(worker_factory)
    plan = api.jobs.validate(spec_for(dataset_id))
    assert isinstance(plan, m.DryRun) and plan.steps_per_epoch == 4 and plan.num_classes == 2
    assert plan.spec.data.dataset == dataset_id and plan.lr_preview.groups


def test_cancel_answers_the_job(api, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    cancelled = api.jobs.cancel(job_id)
    assert isinstance(cancelled, m.Job) and cancelled.status == JobStatus.CANCELLED
    assert api.jobs.cancel(job_id).status == JobStatus.CANCELLED  # idempotent


def test_pause_and_resume_answer_the_job(api, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    paused = api.jobs.pause(job_id)
    assert isinstance(paused, m.Job) and paused.status == JobStatus.PAUSED
    assert api.jobs.pause(job_id).status == JobStatus.PAUSED  # idempotent
    assert api.jobs.resume(job_id).status == JobStatus.QUEUED
    assert api.jobs.resume(job_id).status == JobStatus.QUEUED  # idempotent
    api.jobs.cancel(job_id)
    with pytest.raises(Conflict) as done:
        api.jobs.resume(job_id)
    assert done.value.code == "job_not_paused"


def test_errors_are_typed_with_the_envelope_fields(api, api_server, worker_factory):
    with pytest.raises(NotFound) as missing:
        api.jobs.get("ftjob_nope")
    assert missing.value.status == 404 and missing.value.code == "not_found" and missing.value.param == "job_id"
    assert missing.value.request_id

    dataset_id = worker_side.ready_dataset(worker_factory)
    bad = spec_for(dataset_id) | {"scheduler": {"name": "multistep", "milestones": [1, 5]}}
    with pytest.raises(InvalidRequest) as invalid:
        api.jobs.create(bad)
    assert invalid.value.status == 422 and invalid.value.code == "invalid_spec"
    assert invalid.value.param == "spec.scheduler.milestones"
    assert invalid.value.details[0].param == "spec.scheduler.milestones"

    job_id = worker_side.queued_job(worker_factory)
    worker_side.run(worker_factory, job_id)
    with pytest.raises(Conflict) as done:
        api.jobs.cancel(job_id)
    assert done.value.code == "job_done"

    with Client(api_server.url, "ftk_wrong") as stranger, pytest.raises(Unauthorized) as refused:
        stranger.jobs.list()
    assert refused.value.code == "invalid_api_key"


def test_an_unreachable_server_is_a_connection_error():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retry=Retry(attempts=1, backoff=0.01)) as nobody, pytest.raises(ConnectionError) as error:
        nobody.healthz()
    assert url in str(error.value)
    assert isinstance(error.value, OSError)  # the builtin ConnectionError catches it too


def test_pagination_iterates_every_page_lazily(api_server, api_key, worker_factory):
    ids = [worker_side.queued_job(worker_factory, epochs=1) for _ in range(5)]
    recording = RecordingTransport()
    with Client(api_server.url, api_key, transport=recording) as client:
        found = client.jobs.list_all(status="queued", page_size=2)
        assert recording.requests == []  # nothing fetched until iterated
        assert next(found).id == ids[-1]
        assert len(recording.requests) == 1
        assert [job.id for job in found] == ids[::-1][1:]
    afters = [request.url.params.get("after") for request in recording.requests]
    assert afters == [None, ids[3], ids[1]]  # each page starts after the last one's last_id


def test_event_pages_follow_seq(api, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker_side.start(worker_factory, job_id)
    for at in range(1, 6):
        worker_side.step(worker_factory, job_id, at)
    seqs = [event.seq for event in api.jobs.list_all_events(job_id, page_size=2)]
    assert seqs == list(range(1, 8))
    assert [e.seq for e in api.jobs.list_all_events(job_id, type="step", after=4)] == [5, 6, 7]


def test_an_upload_streams_the_file(api, tmp_path):
    archive = tmp_path / "big.tar"
    with archive.open("wb") as out:
        for i in range(12):
            out.write(bytes([i]) * MB)
    progress: list[tuple[int, int]] = []
    tracemalloc.start()
    try:
        uploaded = api.datasets.upload(archive, on_progress=lambda sent, size: progress.append((sent, size)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded.bytes == 12 * MB
    assert peak < 4 * MB, f"the client held {peak / MB:.1f} MB to upload a 12 MB file"
    sent = [n for n, _ in progress]
    assert {size for _, size in progress} == {12 * MB}
    assert len(sent) > 12 and sent == sorted(sent) and sent[-1] == 12 * MB  # chunk by chunk, as the body streams


def test_a_cut_upload_is_retried_with_its_key_and_its_progress_starts_over(proxy, api_key, tmp_path):
    archive = tmp_path / "cut.tar"
    archive.write_bytes(os.urandom(6 * MB))
    progress: list[int] = []

    def cut_once(sent: int, _size: int) -> None:
        progress.append(sent)
        if sent >= 2 * MB and proxy.cuts == 0:
            proxy.cut(once_one_is_open=True)  # the network drops mid-body (the upload waits here meanwhile)

    with Client(proxy.url, api_key, retry=Retry(attempts=4, backoff=0.05)) as client:
        uploaded = client.datasets.upload(archive, on_progress=cut_once, idempotency_key="upload-once")
        listed = client.datasets.list().data
    assert proxy.cuts == 1
    restart = next(i for i in range(1, len(progress)) if progress[i] < progress[i - 1])
    assert progress[restart - 1] >= 2 * MB and progress[restart] < 2 * MB and progress[-1] == 6 * MB
    assert uploaded.bytes == 6 * MB and uploaded.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert [d.id for d in listed if d.sha256 == uploaded.sha256] == [uploaded.id]  # one data set, not two


def test_an_upload_over_the_limit_is_payload_too_large(api, tmp_path):
    archive = tmp_path / "huge.tar"
    with archive.open("wb") as out:
        out.truncate(MAX_UPLOAD_BYTES + 2 * MB)  # sparse: no disk used
    with pytest.raises(PayloadTooLarge) as error:
        api.datasets.upload(archive)
    assert error.value.status == 413 and error.value.param == "file"


def test_creates_carry_an_idempotency_key_so_a_replay_is_the_same_object(api, api_server, api_key, worker_factory):
    dataset_id = worker_side.ready_dataset(worker_factory)
    first = api.jobs.create(spec_for(dataset_id), idempotency_key="retry-me")
    again = api.jobs.create(spec_for(dataset_id), idempotency_key="retry-me")
    assert again.id == first.id
    with pytest.raises(Conflict):
        api.jobs.create(spec_for(dataset_id, epochs=3), idempotency_key="retry-me")

    recording = RecordingTransport()
    with Client(api_server.url, api_key, transport=recording) as client:
        client.jobs.create(spec_for(dataset_id))
        client.jobs.create(spec_for(dataset_id))
    keys = [request.headers.get("idempotency-key") for request in recording.requests]
    assert len(keys) == 2 and keys[0] and keys[0] != keys[1]  # a fresh key for each create, by default


def public_methods(kind: type) -> set[str]:
    return {name for name in vars(kind) if not name.startswith("_")}


def test_the_async_client_mirrors_the_sync_one():
    from app.client import async_client, client

    pairs = [
        (client.Client, async_client.AsyncClient),
        (client.Datasets, async_client.AsyncDatasets),
        (client.Jobs, async_client.AsyncJobs),
        (client.Backbones, async_client.AsyncBackbones),
    ]
    for sync, asynchronous in pairs:
        assert public_methods(sync) - {"close"} == public_methods(asynchronous) - {"aclose"}, sync.__name__


@pytest.mark.anyio
async def test_the_async_client_answers_typed_objects(api_server, api_key, worker_factory, tmp_path):
    dataset_id = worker_side.ready_dataset(worker_factory)
    archive = tmp_path / "pets.zip"
    archive.write_bytes(zip_bytes(image_tree()))
    async with AsyncClient(api_server.url, api_key) as client:
        assert (await client.readyz()).status == "ready"
        assert (await client.backbones.get("resnet18")).name == "resnet18"
        uploaded = await client.datasets.upload(archive)
        assert isinstance(uploaded, m.Dataset) and uploaded.status == "validating"
        assert [d.id async for d in client.datasets.list_all(page_size=1)] == [uploaded.id, dataset_id]
        jobs = [await client.jobs.create(spec_for(dataset_id)) for _ in range(3)]
        assert [j.id async for j in client.jobs.list_all(page_size=2)] == [j.id for j in reversed(jobs)]
        cancelled = await client.jobs.cancel(jobs[0].id)
        assert isinstance(cancelled, m.Job) and cancelled.status == JobStatus.CANCELLED
        events = [e async for e in client.jobs.list_all_events(jobs[0].id, page_size=1)]
        assert [e.data["to"] for e in events] == ["queued", "cancelled"]
        with pytest.raises(NotFound):
            await client.jobs.get("ftjob_nope")
