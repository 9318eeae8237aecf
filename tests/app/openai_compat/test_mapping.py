"""The OpenAI-compatible routes on both backends, over HTTP in process: files are data sets and fine-tuning
jobs are jobs (the same objects through both APIs), requests map onto the spec, and every bad input is an
error envelope naming the field. The real ``openai`` SDK drives them in tests/integration/test_platform.py."""

from __future__ import annotations

import pytest

from app.db.session import transaction
from app.services import job_state
from tests.app.helpers import image_tree, ready_dataset, validate_queued, zip_bytes

pytestmark = pytest.mark.anyio


async def _file(client, purpose: str | None = "fine-tune"):
    form = {"purpose": purpose} if purpose is not None else None
    return await client.post("/v1/files", files={"file": ("pets.zip", zip_bytes(image_tree()))}, data=form)


async def test_files_are_data_sets(client, app, settings):
    created = await _file(client)
    assert created.status_code == 200, created.text
    shown = created.json()
    assert (shown["object"], shown["status"], shown["purpose"], shown["filename"]) == (
        "file",
        "uploaded",
        "fine-tune",
        "pets.zip",
    )
    for purpose in (None, "assistants"):
        refused = await _file(client, purpose)
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "purpose"
    assert [d["id"] for d in (await client.get("/v1/datasets")).json()["data"]] == [shown["id"]]  # nothing kept

    assert validate_queued(app, settings) == [shown["id"]]
    assert (await client.get(f"/v1/files/{shown['id']}")).json()["status"] == "processed"
    assert (await client.get(f"/v1/datasets/{shown['id']}")).json()["status"] == "ready"
    listed = (await client.get("/v1/files", params={"purpose": "fine-tune", "limit": 5})).json()
    assert [f["id"] for f in listed["data"]] == [shown["id"]] and listed["has_more"] is False
    deleted = await client.delete(f"/v1/files/{shown['id']}")
    assert deleted.json() == {"id": shown["id"], "object": "file", "deleted": True}
    assert (await client.get(f"/v1/files/{shown['id']}")).status_code == 404


async def test_a_create_request_maps_onto_the_spec_and_the_job_is_the_same_job(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    body = {
        "model": "resnet18",
        "training_file": dataset["id"],
        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5},
        "seed": 7,
        "suffix": "pets",
        "metadata": {"team": "vision"},
        "spec": {"data": {"image_size": 32}, "optimizer": {"name": "adamw"}},
    }
    response = await client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued" and job["model"] == "resnet18"
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert (job["seed"], job["user_provided_suffix"], job["metadata"]) == (7, "pets", {"team": "vision"})
    native = (await client.get(f"/v1/jobs/{job['id']}")).json()  # one job, two shapes
    assert native["spec"]["optimizer"]["lr"] == pytest.approx(0.0005)  # adamw's 1e-3, halved
    assert native["spec"]["training"]["epochs"] == 3 and native["spec"]["data"]["batch_size"] == 4
    assert native["name"] == "pets" and native["spec"] == job["spec"]

    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, job["id"], "worker-1", 60)
    assert (await client.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()["status"] == "running"
    cancelled = (await client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")).json()
    assert cancelled["status"] == "running"  # cancelling: the worker stops it at its next step
    with transaction(app.state.session_factory) as session:
        assert job_state.finish_job(session, job["id"], "worker-1", job_state.CANCELLED)
    assert (await client.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()["status"] == "cancelled"

    events = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 2})).json()
    assert [e["message"] for e in events["data"]] == ["job cancelled", "cancel requested"] and events["has_more"]
    rest = await client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": events["data"][-1]["id"], "limit": 10}
    )
    assert [e["message"] for e in rest.json()["data"]][-1] == "job queued" and not rest.json()["has_more"]
    unknown = await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": "evt_nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "after"


async def test_bad_create_requests_are_errors_that_name_the_field(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    base = {"model": "resnet18", "training_file": dataset["id"], "spec": {"data": {"image_size": 32}}}
    cases = [
        ({"hyperparameters": {"n_epochs": 0}}, 422, "hyperparameters.n_epochs"),
        ({"method": {"type": "dpo"}}, 422, "method.type"),
        ({"validation_file": "ds_other"}, 422, "validation_file"),
        ({"integrations": [{"type": "wandb"}]}, 422, "integrations.0.type"),
        ({"model": "alexnet", "spec": {"backbone": {"name": "vgg11"}, "data": {"image_size": 32}}}, 422, "model"),
        ({"model": "resnet1000"}, 422, "spec.backbone.name"),
        ({"spec": {"data": {"image_size": 32}, "optimizer": {"lr": -1}}}, 422, "spec.optimizer.lr"),
        ({"model": "ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA"}, 404, "model"),
        ({"training_file": "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"}, 404, "spec.data.dataset"),
        ({"colour": "red"}, 422, "colour"),
    ]
    for change, status, param in cases:
        response = await client.post("/v1/fine_tuning/jobs", json={**base, **change})
        assert response.status_code == status, (change, response.text)
        assert response.json()["error"]["param"] == param, (change, response.json())
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []
    missing = await client.get("/v1/fine_tuning/jobs/ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert missing.status_code == 404


async def test_pause_and_resume_map_onto_the_service_s_own(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    body = {"model": "resnet18", "training_file": dataset["id"], "spec": {"data": {"image_size": 32}}}
    job = (await client.post("/v1/fine_tuning/jobs", json=body)).json()
    paused = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"  # a queued job is held at once
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "paused"
    resumed = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, job["id"], "worker-1", 60)
    pausing = (await client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")).json()
    assert pausing["status"] == "running"  # pausing: the worker checkpoints at its next step
    missing = await client.post("/v1/fine_tuning/jobs/ftjob_0000000000000000000000000/pause")
    assert missing.status_code == 404
