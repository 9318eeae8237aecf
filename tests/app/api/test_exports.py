"""Exports over HTTP: the request's checks (a succeeded job, a known format, an opset in range), the task it
queues on the light queue, and the export object that follows it. The task itself runs in
tests/worker/test_devices_and_exports.py."""

from __future__ import annotations

import pytest

from app.db.session import transaction
from app.dispatch.names import CPU_QUEUE, EXPORT_JOB, GPU_QUEUE, TRAIN_JOB, training_queue
from app.services import job_state
from app.statuses import JobStatus
from tests.app.helpers import broker_messages, job_body, ready_dataset

pytestmark = pytest.mark.anyio


async def test_an_export_is_queued_for_a_succeeded_job_only(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    job = (await client.post("/v1/jobs", json=job_body(dataset["id"]))).json()
    url = f"/v1/jobs/{job['id']}/exports"

    not_done = await client.post(url, json={"format": "onnx"})
    assert not_done.status_code == 409
    assert "only a succeeded job's weights can be exported" in not_done.json()["error"]["message"]
    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, job["id"], "w", 60)
        assert job_state.finish_job(session, job["id"], "w", JobStatus.SUCCEEDED)
    broker_messages(app, GPU_QUEUE)

    created = await client.post(url, json={"format": "onnx", "dynamic_batch": False, "opset": 20})
    assert created.status_code == 202, created.text
    made = created.json()
    assert made["object"] == "fine_tuning.job.export" and made["id"].startswith("exp_")
    assert made["status"] == "queued" and made["opset"] == 20 and made["dynamic_batch"] is False
    assert made["file"] is None and made["error"] is None
    [message] = broker_messages(app, CPU_QUEUE)  # the light queue
    assert message["task"] == EXPORT_JOB and message["args"] == [made["id"]]
    again = await client.post(url, json={"format": "onnx"})
    assert again.status_code == 409 and "already queued" in again.json()["error"]["message"]
    assert (await client.get(f"{url}/{made['id']}")).json() == made
    assert (await client.get(url)).json() == {"object": "list", "data": [made]}
    assert (await client.get(f"{url}/exp_missing")).status_code == 404
    assert (await client.post("/v1/jobs/ftjob_missing/exports", json={"format": "onnx"})).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"format": "tflite"}, "format"),
        ({"format": "onnx", "opset": 9}, "opset"),
        ({"format": "onnx", "opset": 24}, "opset"),
        ({"format": "onnx", "extra": 1}, "extra"),
        ({}, "format"),
    ],
)
async def test_a_bad_export_request_is_a_422_naming_the_field(client, body, param):
    response = await client.post("/v1/jobs/ftjob_x/exports", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"].endswith(param)


def test_a_job_asking_for_n_devices_goes_to_the_queue_of_n_devices():
    assert training_queue(1) == GPU_QUEUE == "gpu"
    assert training_queue(2) == "gpu.x2" and training_queue(8) == "gpu.x8" and training_queue("all") == "gpu.all"


async def test_a_two_device_job_is_sent_to_its_queue(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    job = (await client.post("/v1/jobs", json=job_body(dataset["id"], training={"devices": 2}))).json()
    assert job["spec"]["training"]["devices"] == 2
    assert broker_messages(app, GPU_QUEUE) == []
    [message] = broker_messages(app, "gpu.x2")
    assert message["task"] == TRAIN_JOB and message["args"] == [job["id"]]


def test_the_api_opset_range_is_the_engines():
    from app.schemas import exports as api
    from training import exports as engine

    assert (api.MIN_OPSET, api.MAX_OPSET, api.DEFAULT_OPSET) == (
        engine.MIN_OPSET,
        engine.MAX_OPSET,
        engine.DEFAULT_OPSET,
    )
