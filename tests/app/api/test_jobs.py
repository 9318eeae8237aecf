"""Jobs over HTTP: submission and its checks, lists and filters, progress, cancel, events, metrics,
checkpoints, artifacts, idempotency and the dry run."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest

from app.db.session import transaction
from app.dispatch.names import GPU_QUEUE, TRAIN_JOB
from app.services import job_records, job_state
from app.statuses import EventType, JobStatus
from app.store import StoredObject
from tests.app.helpers import broker_messages, job_body, ready_dataset

pytestmark = pytest.mark.anyio


@pytest.fixture
async def dataset(client, app, settings):
    return await ready_dataset(client, app, settings)


async def submit(client, body, **kwargs):
    response = await client.post("/v1/jobs", json=body, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


async def test_submit_stores_the_resolved_spec_and_queues_the_job(client, app, dataset):
    body = job_body(dataset["id"], optimizer={"name": "adamw"}) | {"name": "first", "metadata": {"team": "vision"}}
    job = await submit(client, body)
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob_")
    assert job["status"] == "queued"
    assert job["name"] == "first" and job["metadata"] == {"team": "vision"}
    assert job["dataset"] == dataset["id"]
    # Defaults filled in: the stored spec is what runs.
    assert job["spec"]["optimizer"]["lr"] == 1e-3
    assert job["spec"]["regularization"]["weight_decay_mode"] == "decoupled"
    assert job["spec"]["scheduler"]["name"] == "constant"
    assert job["attempt"] == 0 and job["max_attempts"] == 3
    assert job["progress"] == {"epoch": 0, "total_epochs": 3, "fraction": 0.0, "eta_seconds": None}
    assert job["error"] is None and job["result_artifacts"] == []
    [message] = broker_messages(app, GPU_QUEUE)
    assert message == {"task": TRAIN_JOB, "args": [job["id"]], "expires": message["expires"]}
    assert message["expires"]
    assert (await client.get(f"/v1/jobs/{job['id']}")).json() == job


async def test_a_spec_error_is_a_422_naming_the_field(client, dataset):
    body = job_body(dataset["id"], scheduler={"name": "multistep", "milestones": [2, 5]})
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_spec"
    assert error["param"] == "spec.scheduler.milestones"
    assert "never reached" in error["message"]
    assert error["details"][0]["param"] == "spec.scheduler.milestones"


async def test_every_spec_problem_is_listed(client, dataset):
    body = job_body(dataset["id"], optimizer={"lr": -1}, data={"batch_size": 0})
    error = (await client.post("/v1/jobs", json=body)).json()["error"]
    params = {detail["param"] for detail in error["details"]}
    assert {"spec.optimizer.lr", "spec.data.batch_size"} <= params


async def test_an_unknown_backbone_names_the_closest(client, dataset):
    response = await client.post("/v1/jobs", json=job_body(dataset["id"], backbone={"name": "resnet19"}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "spec.backbone.name"
    assert "resnet18" in error["message"] and "did you mean" in error["message"]


async def test_a_data_set_that_is_not_ready_is_a_409(client, app, settings):
    from tests.app.helpers import image_tree, upload, zip_bytes

    pending = (await upload(client, zip_bytes(image_tree()))).json()
    response = await client.post("/v1/jobs", json=job_body(pending["id"]))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "dataset_not_ready"
    assert response.json()["error"]["param"] == "spec.data.dataset"
    assert broker_messages(app, GPU_QUEUE) == []


async def test_val_split_0_trains_on_all_of_train_and_a_val_monitor_without_val_data_is_a_422(client, dataset):
    job = await submit(client, job_body(dataset["id"], data={"val_split": 0}))
    assert job["spec"]["data"]["val_split"] == 0 and job["spec"]["training"]["monitor"] is None
    without_val = {
        "regularization": {"early_stopping": {"patience": 2}},  # its monitor: val_loss by default
        "training": {"monitor": "val_acc"},
    }
    for section, value in without_val.items():
        response = await client.post(
            "/v1/jobs", json=job_body(dataset["id"], data={"val_split": 0}, **{section: value})
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_spec" and error["param"] == f"spec.{section}." + (
            "early_stopping.monitor" if section == "regularization" else "monitor"
        )
        assert "needs validation data" in error["message"] and "val_split" in error["message"]
    response = await client.post("/v1/jobs", json=job_body(dataset["id"], training={"monitor": "test_acc"}))
    assert response.status_code == 422 and "test/" in response.json()["error"]["message"]  # this set has no test/


async def test_an_unknown_data_set_is_a_404(client):
    response = await client.post("/v1/jobs", json=job_body("ds_01JAAAAAAAAAAAAAAAAAAAAAAA"))
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "spec.data.dataset"


async def test_uncached_weights_are_refused_when_downloads_are_off(client, dataset, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    settings.engine.allow_weight_downloads = False
    response = await client.post("/v1/jobs", json=job_body(dataset["id"], backbone={"weights": "IMAGENET1K_V1"}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "spec.backbone.weights"
    assert error["code"] == "weights_unavailable"
    assert str(tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in error["message"]
    settings.engine.allow_weight_downloads = True
    assert (
        await client.post("/v1/jobs", json=job_body(dataset["id"], backbone={"weights": "DEFAULT"}))
    ).status_code == 201


async def test_cached_weights_are_accepted(client, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    response = await client.post("/v1/jobs", json=job_body(dataset["id"], backbone={"weights": "IMAGENET1K_V1"}))
    assert response.status_code == 201, response.text


async def test_a_host_path_is_refused_unless_under_an_allowed_root(client, settings, tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "set").mkdir(parents=True)
    body = {"spec": {"data": {"path": "/etc"}}}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "spec.data.path"
    assert response.json()["error"]["code"] == "path_not_allowed"
    settings.allowed_data_roots = [allowed]
    outside = await client.post("/v1/jobs", json={"spec": {"data": {"path": str(allowed / ".." / "elsewhere")}}})
    assert outside.status_code == 422
    inside = await client.post("/v1/jobs", json={"spec": {"data": {"path": str(allowed / "set")}}})
    assert inside.status_code == 201, inside.text
    assert inside.json()["dataset"] is None


async def test_init_from_takes_a_succeeded_job_or_a_checkpoint_of_the_project(client, app, dataset):
    first = await submit(client, job_body(dataset["id"]))
    body = job_body(dataset["id"], backbone={"init_from": first["id"]})
    not_done = await client.post("/v1/jobs", json=body)
    assert not_done.status_code == 422
    assert not_done.json()["error"]["param"] == "spec.backbone.init_from"
    factory = app.state.session_factory
    weights = StoredObject(f"jobs/{first['id']}/model.safetensors", 7, "0" * 64)
    with transaction(factory) as session:
        assert job_state.claim_job(session, first["id"], "worker-1", 60)
        checkpoint = job_records.register_checkpoint(session, first["id"], weights, epoch=1, step=10, owner="worker-1")
        job_records.register_artifact(session, first["id"], "model.safetensors", weights, owner="worker-1")
        assert job_state.finish_job(session, first["id"], "worker-1", JobStatus.SUCCEEDED)
    assert (await client.post("/v1/jobs", json=body)).status_code == 201
    from_checkpoint = job_body(dataset["id"], backbone={"init_from": checkpoint.id})
    assert (await client.post("/v1/jobs", json=from_checkpoint)).status_code == 201
    other_backbone = job_body(dataset["id"], backbone={"name": "resnet34", "init_from": first["id"]})
    response = await client.post("/v1/jobs", json=other_backbone)
    assert response.status_code == 422 and "resnet18" in response.json()["error"]["message"]
    for bad in ("ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA", "ckpt_01JAAAAAAAAAAAAAAAAAAAAAAA", "/etc/passwd", "ftjob_x"):
        response = await client.post("/v1/jobs", json=job_body(dataset["id"], backbone={"init_from": bad}))
        assert response.status_code == 422, bad
        assert response.json()["error"]["param"] == "spec.backbone.init_from"


async def test_list_filters_and_paginates(client, dataset):
    a = await submit(client, job_body(dataset["id"]) | {"metadata": {"team": "vision", "run": "1"}})
    b = await submit(client, job_body(dataset["id"]) | {"metadata": {"team": "vision", "run": "2"}})
    c = await submit(client, job_body(dataset["id"]) | {"metadata": {"team": "audio"}})
    await client.post(f"/v1/jobs/{b['id']}/cancel")

    async def ids(**params):
        response = await client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    assert await ids() == [c["id"], b["id"], a["id"]]
    assert await ids(status="cancelled") == [b["id"]]
    assert await ids(status=["queued", "cancelled"]) == [c["id"], b["id"], a["id"]]
    assert await ids(dataset=dataset["id"]) == [c["id"], b["id"], a["id"]]
    assert await ids(dataset="ds_01JAAAAAAAAAAAAAAAAAAAAAAA") == []
    assert await ids(**{"metadata[team]": "vision"}) == [b["id"], a["id"]]
    assert await ids(**{"metadata[team]": "vision", "metadata[run]": "2"}) == [b["id"]]
    assert await ids(**{"metadata[team]": "nobody"}) == []
    assert await ids(created_after=a["created_at"]) == [c["id"], b["id"], a["id"]]
    assert await ids(created_before=a["created_at"]) == []
    assert await ids(created_after=a["created_at"] + 3600) == []
    page = (await client.get("/v1/jobs", params={"limit": 2})).json()
    assert page["has_more"] and [j["id"] for j in page["data"]] == [c["id"], b["id"]]
    rest = (await client.get("/v1/jobs", params={"limit": 2, "after": page["last_id"]})).json()
    assert not rest["has_more"] and [j["id"] for j in rest["data"]] == [a["id"]]
    bad = await client.get("/v1/jobs", params={"metadata[bad key]": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "metadata"
    assert (await client.get("/v1/jobs", params={"status": "sleeping"})).status_code == 422


async def test_progress_metrics_checkpoints_and_artifacts_as_a_worker_records_them(client, app, dataset):
    job = await submit(client, job_body(dataset["id"], training={"epochs": 4, "monitor": "val_acc"}))
    factory = app.state.session_factory
    with transaction(factory) as session:
        assert job_state.claim_job(session, job["id"], "w", 60)
    for epoch, acc in ((1, 0.5), (2, 0.7), (3, 0.6)):
        metrics = {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": acc, "epoch_seconds": 2.0}
        with transaction(factory) as session:
            job_records.record_epoch_metrics(session, job["id"], metrics, owner="w")
            stored = StoredObject(f"jobs/{job['id']}/checkpoints/epoch-{epoch}.pt", 100 + epoch, "a" * 64)
            job_records.register_checkpoint(
                session, job["id"], stored, epoch=epoch, step=epoch * 10, is_best=epoch == 2, owner="w"
            )
    shown = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert shown["status"] == "running" and shown["attempt"] == 1
    assert shown["progress"]["epoch"] == 3 and shown["progress"]["total_epochs"] == 4
    assert shown["progress"]["fraction"] == 0.75
    assert shown["progress"]["eta_seconds"] is not None and shown["progress"]["eta_seconds"] >= 0
    assert shown["metrics"]["latest"]["epoch"] == 3
    assert shown["metrics"]["best"]["val_acc"] == 0.7 and shown["metrics"]["best_epoch"] == 2
    assert shown["started_at"] is not None

    table = (await client.get(f"/v1/jobs/{job['id']}/metrics")).json()
    assert [row["epoch"] for row in table["data"]] == [1, 2, 3]
    assert table["data"][1]["metrics"]["val_acc"] == 0.7
    checkpoints = (await client.get(f"/v1/jobs/{job['id']}/checkpoints", params={"limit": 2})).json()
    assert [c["epoch"] for c in checkpoints["data"]] == [3, 2] and checkpoints["has_more"]
    assert checkpoints["data"][1]["is_best"] is True
    assert checkpoints["data"][0]["object"] == "fine_tuning.job.checkpoint"

    weights = StoredObject(f"jobs/{job['id']}/model.safetensors", 1234, hashlib.sha256(b"w").hexdigest())
    with transaction(factory) as session:
        job_records.register_artifact(session, job["id"], "model.safetensors", weights, owner="w")
        job_records.register_artifact(session, job["id"], "model.json", weights, owner="w")
        assert job_state.finish_job(
            session, job["id"], "w", JobStatus.SUCCEEDED, final_metrics={"val_acc": 0.7}, test_metrics={"acc": 0.69}
        )
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["finished_at"] is not None
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["eta_seconds"] == 0.0
    assert done["result_artifacts"] == ["model.json", "model.safetensors"]
    assert done["metrics"]["final"] == {"val_acc": 0.7} and done["metrics"]["test"] == {"acc": 0.69}
    artifacts = (await client.get(f"/v1/jobs/{job['id']}/artifacts")).json()["data"]
    assert [(a["name"], a["bytes"]) for a in artifacts] == [("model.json", 1234), ("model.safetensors", 1234)]


async def test_events_are_paginated_by_seq_and_filtered_by_type(client, app, dataset):
    job = await submit(client, job_body(dataset["id"]))
    factory = app.state.session_factory
    with transaction(factory) as session:
        job_state.claim_job(session, job["id"], "w", 60)
        for epoch in (1, 2):
            job_records.record_epoch_metrics(session, job["id"], {"epoch": epoch, "val_acc": 0.5}, owner="w")
        job_records.append_event(session, job["id"], EventType.WARNING, {"hint": "x"}, "low memory")
    url = f"/v1/jobs/{job['id']}/events"
    everything = (await client.get(url, params={"limit": 100})).json()
    assert [e["seq"] for e in everything["data"]] == [1, 2, 3, 4, 5]
    assert [e["type"] for e in everything["data"]] == ["status", "status", "epoch", "epoch", "warning"]
    assert everything["data"][0]["data"] == {"from": None, "to": "queued"}
    assert everything["data"][1]["data"]["to"] == "running"
    assert everything["data"][4]["level"] == "warning"
    page = (await client.get(url, params={"limit": 2})).json()
    assert page["has_more"] and page["last_seq"] == 2
    rest = (await client.get(url, params={"limit": 10, "after": page["last_seq"]})).json()
    assert [e["seq"] for e in rest["data"]] == [3, 4, 5] and not rest["has_more"]
    epochs = (await client.get(url, params={"type": "epoch"})).json()
    assert [e["seq"] for e in epochs["data"]] == [3, 4]
    both = (await client.get(url, params={"type": ["status", "warning"]})).json()
    assert [e["seq"] for e in both["data"]] == [1, 2, 5]


async def test_cancel_a_queued_job_at_once_and_a_running_one_through_cancelling(client, app, dataset):
    queued = await submit(client, job_body(dataset["id"]))
    response = await client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert (await client.post(f"/v1/jobs/{queued['id']}/cancel")).json()["status"] == "cancelled"

    running = await submit(client, job_body(dataset["id"]))
    with transaction(app.state.session_factory) as session:
        job_state.claim_job(session, running["id"], "w", 60)
    assert (await client.post(f"/v1/jobs/{running['id']}/cancel")).json()["status"] == "cancelling"
    with transaction(app.state.session_factory) as session:
        assert job_state.renew_lease(session, running["id"], "w", 60) is False  # the worker learns to stop
        assert job_state.finish_job(session, running["id"], "w", JobStatus.CANCELLED)
    assert (await client.get(f"/v1/jobs/{running['id']}")).json()["status"] == "cancelled"


async def test_cancel_of_a_finished_job_is_a_409(client, app, dataset):
    job = await submit(client, job_body(dataset["id"]))
    with transaction(app.state.session_factory) as session:
        job_state.claim_job(session, job["id"], "w", 60)
        job_state.finish_job(session, job["id"], "w", JobStatus.FAILED, job_state.JobError("non_finite_loss", "nan"))
    response = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_done"
    shown = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert shown["status"] == "failed"
    assert shown["error"] == {"code": "non_finite_loss", "message": "nan"}


async def test_pause_holds_a_queued_job_and_resume_sends_its_task_again(client, app, dataset):
    job = await submit(client, job_body(dataset["id"]))
    broker_messages(app, GPU_QUEUE)  # the submission's own task
    paused = await client.post(f"/v1/jobs/{job['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert (await client.post(f"/v1/jobs/{job['id']}/pause")).json()["status"] == "paused"
    assert [j["id"] for j in (await client.get("/v1/jobs", params={"status": "paused"})).json()["data"]] == [job["id"]]
    resumed = await client.post(f"/v1/jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert [m["args"] for m in broker_messages(app, GPU_QUEUE) if m["task"] == TRAIN_JOB] == [[job["id"]]]
    again = await client.post(f"/v1/jobs/{job['id']}/resume")  # already queued: nothing more is sent
    assert again.json()["status"] == "queued" and broker_messages(app, GPU_QUEUE) == []
    moves = [
        (e["data"]["from"], e["data"]["to"])
        for e in (await client.get(f"/v1/jobs/{job['id']}/events", params={"type": "status"})).json()["data"]
    ]
    assert moves == [(None, "queued"), ("queued", "paused"), ("paused", "queued")]


async def test_pause_a_running_job_through_pausing_and_the_409s(client, app, dataset):
    job = await submit(client, job_body(dataset["id"]))
    factory = app.state.session_factory
    with transaction(factory) as session:
        job_state.claim_job(session, job["id"], "w", 60)
    assert (await client.post(f"/v1/jobs/{job['id']}/pause")).json()["status"] == "pausing"
    early = await client.post(f"/v1/jobs/{job['id']}/resume")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_pausing"
    with transaction(factory) as session:
        assert job_state.release_job(session, job["id"], "w") == JobStatus.PAUSED  # what the worker does
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "paused"
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    for action, code in (("pause", "job_done"), ("resume", "job_not_paused")):
        response = await client.post(f"/v1/jobs/{job['id']}/{action}")
        assert response.status_code == 409 and response.json()["error"]["code"] == code


async def test_unknown_jobs_are_404_everywhere(client):
    unknown = "ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA"
    for method, path in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("GET", "/events"),
        ("GET", "/metrics"),
        ("GET", "/checkpoints"),
        ("GET", "/artifacts"),
    ]:
        response = await client.request(method, f"/v1/jobs/{unknown}{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


async def test_idempotent_submit(client, app, dataset):
    body = job_body(dataset["id"])
    first = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert len(broker_messages(app, GPU_QUEUE)) == 1
    changed = await client.post(
        "/v1/jobs", json=job_body(dataset["id"], training={"epochs": 5}), headers={"Idempotency-Key": "k1"}
    )
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "idempotency_key_reused"
    other_key = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert other_key.json()["id"] != first.json()["id"]
    assert len((await client.get("/v1/jobs")).json()["data"]) == 2


async def test_idempotency_records_expire(client, app, dataset, settings):
    settings.idempotency_ttl_seconds = 1
    body = job_body(dataset["id"])
    first = (await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})).json()
    time.sleep(1.1)
    later = (await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})).json()
    assert later["id"] != first["id"]


async def test_dry_run_plans_without_storing(client, app, dataset):
    body = job_body(
        dataset["id"],
        optimizer={"name": "sgd", "lr": 0.1},
        scheduler={"name": "cosine", "warmup_epochs": 1},
        data={"batch_size": 2, "val_split": 0.34},
    )
    response = await client.post("/v1/jobs/validate", json=body)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["object"] == "fine_tuning.job.dry_run"
    assert plan["num_classes"] == 2
    assert plan["train_images"] == 4  # 3 per class, one of each held out for validation
    assert plan["steps_per_epoch"] == 2 and plan["total_steps"] == 6
    assert plan["params_trainable"] == plan["params_total"] > 11_000_000
    assert plan["spec"]["scheduler"]["t_max"] is None and plan["spec"]["regularization"]["weight_decay_mode"] == "l2"
    lr = plan["lr_preview"]
    assert lr["steps"] == list(range(6))
    head = lr["groups"].index("head")
    assert lr["lr"][0][head] < lr["lr"][1][head] <= 0.1  # the warmup climbs
    assert (await client.get("/v1/jobs")).json()["data"] == []
    assert broker_messages(app, GPU_QUEUE) == []


async def test_dry_run_refuses_what_submission_refuses(client):
    response = await client.post("/v1/jobs/validate", json=job_body("ds_01JAAAAAAAAAAAAAAAAAAAAAAA"))
    assert response.status_code == 404
    bad = await client.post("/v1/jobs/validate", json={"spec": {"data": {"dataset": "x"}}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "spec.data.dataset"


async def test_the_confusion_matrices_a_job_published(client, app, dataset):
    job = await submit(client, job_body(dataset["id"]))
    missing = await client.get(f"/v1/jobs/{job['id']}/confusion")
    assert missing.status_code == 404 and "when it succeeds" in missing.json()["error"]["message"]
    assert (await client.get("/v1/jobs/ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA/confusion")).status_code == 404

    # What the engine writes (confusion.json), published by the worker: the API serves it typed.
    record = {
        "class_names": ["cat", "dog"],
        "val": {"matrix": [[3, 1], [0, 2]], "per_class_accuracy": [0.75, 1.0], "images": 6},
        "test": None,
    }
    stored = app.state.store.put(f"jobs/{job['id']}/confusion.json", io.BytesIO(json.dumps(record).encode()))
    with transaction(app.state.session_factory) as session:
        assert job_state.claim_job(session, job["id"], "w", 60)
        job_records.register_artifact(session, job["id"], "confusion.json", stored, owner="w")
    shown = (await client.get(f"/v1/jobs/{job['id']}/confusion")).json()
    assert shown == {"object": "fine_tuning.job.confusion", "job_id": job["id"], **record}
