"""One attempt at a job, as a worker's pool child runs it: claimed, trained, recorded, and ended the way
its run went: succeeded with its artifacts, cancelled, failed with a code, requeued after SIGTERM."""

from __future__ import annotations

import json
import threading
import time

import torch
import torchvision
from safetensors.torch import load_file
from sqlalchemy import update

from app.db.models import Job
from app.db.session import transaction
from app.repositories import job_records
from app.services.job_state import claim_job, request_cancel, request_pause, resume_job
from app.statuses import JobStatus
from tests.training.conftest import CLASSES
from tests.worker.conftest import artifact_key, get_job, job_spec, read, submit, upload_ready_dataset
from worker.runner import JobRunner


def run(services, job_id: str, preempt: threading.Event | None = None) -> str:
    return JobRunner(services, job_id, preempt or threading.Event()).run()


def events(services, job_id: str) -> list:
    rows, _ = read(services, lambda s: job_records.events_page(s, job_id, types=[], after=None, limit=1000))
    return rows


def test_a_job_runs_to_success_and_its_weights_predict_as_reported(services, colour_archive, tmp_path):
    dataset_id = upload_ready_dataset(services, colour_archive)
    job_id = submit(services, job_spec(dataset_id))
    assert run(services, job_id) == "succeeded"

    job = read(services, get_job, job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempt == 1 and job.epochs_completed == 2
    assert job.test_metrics["test_acc"] is not None
    names = {a.name for a in read(services, job_records.artifacts, job_id)}
    assert {"model.safetensors", "model.json", "metrics.json", "confusion.json"} <= names
    assert any(name.startswith("epoch-") and name.endswith(".pt") for name in names)
    kinds = [e.type for e in events(services, job_id)]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "status"
    assert kinds.count("epoch") == 2 and "step" in kinds and "checkpoint" in kinds
    seqs = [e.seq for e in events(services, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    # The attempt's phases and the publisher's work beside the engine, recorded with its end (worker.timings).
    timings = next(e.data["timings"] for e in events(services, job_id) if "timings" in (e.data or {}))
    phases = timings["phases_seconds"]
    assert list(phases) == ["claim", "imports", "inputs", "engine", "drain", "artifacts", "tracking"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["engine"] > 0
    checkpoints = [e for e in events(services, job_id) if e.type == "checkpoint"]
    background = timings["background"]
    assert background["checkpoint_uploads"] == background["checkpoint_registrations"] == len(checkpoints)
    assert background["checkpoint_upload_bytes"] > 0 and background["event_writes"] > kinds.count("epoch")

    # The published weights, rebuilt from the card with torchvision alone, predict the test images with
    # exactly the accuracy the job reported.
    store = services.store
    card = json.loads(store.open(artifact_key(services, job_id, "model.json")).read())
    model = torchvision.models.get_model(card["backbone"], **card["torchvision_kwargs"])
    model.load_state_dict(
        load_file(str(store.local_path(artifact_key(services, job_id, "model.safetensors")))), strict=True
    )
    model.eval()
    assert card["class_names"] == list(CLASSES)
    from app.repositories import datasets
    from app.services.dataset_validation import dataset_folder
    from training.data import load_data

    with transaction(services.factory) as session:
        folder = dataset_folder(services.store, services.settings, datasets.get_any(session, dataset_id))
    data = load_data(
        job_spec(dataset_id).data,
        16,
        source=folder,
        work_dir=tmp_path,
        seed=0,
        device=torch.device("cpu"),
        settings=services.settings.engine,
        normalization=(tuple(card["preprocessing"]["mean"]), tuple(card["preprocessing"]["std"])),
    )
    mean = torch.tensor(card["preprocessing"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card["preprocessing"]["std"]).view(1, 3, 1, 1)
    correct = seen = 0
    with torch.no_grad():
        for images, labels in data.test.batches(0):
            predictions = model((images.float() / 255 - mean) / std).argmax(dim=1)
            correct += int((predictions == labels).sum())
            seen += len(labels)
    assert correct / seen == job.test_metrics["test_acc"]


def test_a_cancel_stops_the_run_within_a_second(services, colour_archive):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive), training={"epochs": 30}))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run(services, job_id)))
    worker.start()
    while not any(e.type == "epoch" for e in events(services, job_id)):
        time.sleep(0.1)
    asked = time.monotonic()
    read(services, request_cancel, job_id)
    worker.join(30)
    assert outcome == ["cancelled"]
    assert time.monotonic() - asked < 2.0
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.CANCELLED and job.epochs_completed < 30
    assert not read(services, job_records.artifacts, job_id)


def test_sigterm_checkpoints_mid_epoch_and_the_next_attempt_resumes_to_the_same_weights(services, colour_archive):
    dataset_id = upload_ready_dataset(services, colour_archive)
    spec = job_spec(dataset_id, training={"epochs": 2, "log_every_steps": 1})
    straight = submit(services, spec)
    assert run(services, straight) == "succeeded"

    job_id = submit(services, spec)
    preempt = threading.Event()
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run(services, job_id, preempt)))
    worker.start()
    while sum(e.type == "step" for e in events(services, job_id)) < 3:
        time.sleep(0.05)
    preempt.set()  # what SIGUSR2 from the shutting-down parent does
    worker.join(60)
    assert outcome == ["released (queued)"]
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.QUEUED and job.attempt == 0  # the attempt is handed back
    latest = read(services, job_records.latest_checkpoint, job_id)
    assert latest is not None and latest.mid_epoch

    assert run(services, job_id) == "succeeded"
    resumed_from = [e.message for e in events(services, job_id) if e.type == "info" and "training on" in e.message]
    assert "from epoch 1 of 2" in resumed_from[0] and len(resumed_from) == 2
    a = load_file(str(services.store.local_path(artifact_key(services, straight, "model.safetensors"))))
    b = load_file(str(services.store.local_path(artifact_key(services, job_id, "model.safetensors"))))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_loss_fails_the_job_with_its_code_and_the_traceback_in_an_event(services, colour_archive):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive), optimizer={"lr": 1e12}))
    assert run(services, job_id) == "failed (non_finite_loss)"
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "non_finite_loss"
    assert "\n" not in job.error_message and "lower optimizer.lr" in job.error_message
    error = next(e for e in events(services, job_id) if e.type == "error")
    assert "Traceback" in error.data["traceback"] and error.data["code"] == "non_finite_loss"
    assert not (services.settings.work_path / job_id).exists()  # the failed attempt's folder is removed


def test_a_redelivered_message_for_a_job_another_worker_owns_does_nothing(services, colour_archive):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive)))
    assert read(services, claim_job, job_id, "someone-else:1:abc", 60)
    assert run(services, job_id) == "not claimed"
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.RUNNING and job.owner == "someone-else:1:abc"


def test_a_worker_that_loses_its_lease_stops_and_writes_nothing_more(services, colour_archive):
    job_id = submit(services, job_spec(upload_ready_dataset(services, colour_archive), training={"epochs": 30}))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run(services, job_id)))
    worker.start()
    while not any(e.type == "epoch" for e in events(services, job_id)):
        time.sleep(0.1)
    with transaction(services.factory) as session:  # the reaper gave the job to another worker meanwhile
        session.execute(update(Job).where(Job.id == job_id).values(owner="thief:2:def"))
    worker.join(30)
    assert outcome == ["lease lost"]
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.RUNNING and job.owner == "thief:2:def"
    assert not read(services, job_records.artifacts, job_id)
    assert not (services.settings.work_path / job_id).exists()  # the lost attempt's folder is removed


def test_init_from_an_earlier_job_starts_from_its_weights(services, colour_archive):
    dataset_id = upload_ready_dataset(services, colour_archive)
    first = submit(services, job_spec(dataset_id, training={"epochs": 1}))
    assert run(services, first) == "succeeded"
    second = submit(services, job_spec(dataset_id, backbone={"init_from": first}, training={"epochs": 1}))
    assert run(services, second) == "succeeded"
    notes = [e.message for e in events(services, second) if e.type == "info"]
    assert any("head included" in note for note in notes)
    cards = [json.loads(services.store.open(artifact_key(services, j, "model.json")).read()) for j in (first, second)]
    assert cards[0]["preprocessing"]["mean"] == cards[1]["preprocessing"]["mean"]
    assert cards[1]["spec"]["backbone"]["init_from"] == first  # the record names the job, not a worker's path


def test_a_pause_checkpoints_frees_the_worker_and_resume_reaches_the_same_weights(services, colour_archive):
    """Paused after 3 steps and resumed, a deterministic job publishes the uninterrupted run's weights."""
    dataset_id = upload_ready_dataset(services, colour_archive)
    spec = job_spec(dataset_id, training={"epochs": 2, "log_every_steps": 1})
    straight = submit(services, spec)
    assert run(services, straight) == "succeeded"

    job_id = submit(services, spec)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run(services, job_id)))
    worker.start()
    while sum(e.type == "step" for e in events(services, job_id)) < 3:
        time.sleep(0.05)
    assert read(services, request_pause, job_id) == JobStatus.PAUSING
    worker.join(60)
    assert outcome == ["released (paused)"]  # the worker is free
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.PAUSED and job.attempt == 0 and job.owner is None
    latest = read(services, job_records.latest_checkpoint, job_id)
    assert latest is not None and latest.mid_epoch
    assert run(services, job_id) == "not claimed"  # a paused job is held

    assert read(services, resume_job, job_id) is True
    assert run(services, job_id) == "succeeded"
    moves = [(e.data["from"], e.data["to"]) for e in events(services, job_id) if e.type == "status"]
    assert ("running", "pausing") in moves and ("pausing", "paused") in moves and ("paused", "queued") in moves
    a = load_file(str(services.store.local_path(artifact_key(services, straight, "model.safetensors"))))
    b = load_file(str(services.store.local_path(artifact_key(services, job_id, "model.safetensors"))))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_job_with_the_guard_succeeds_with_its_rollbacks_in_its_events(services, colour_archive):
    guard = {"action": "rollback", "lr_factor": 0.001, "max_rollbacks": 3, "snapshot_every_steps": 2}
    spec = job_spec(
        upload_ready_dataset(services, colour_archive),
        optimizer={"lr": 1000.0},  # diverges within the first epoch without the guard
        training={"epochs": 1, "divergence": guard},
    )
    job_id = submit(services, spec)
    assert run(services, job_id) == "succeeded"
    job = read(services, get_job, job_id)
    assert all(v == v and abs(v) != float("inf") for k, v in job.final_metrics.items() if isinstance(v, float))
    rollbacks = [e for e in events(services, job_id) if e.type == "warning" and "rollback" in e.data]
    assert rollbacks and rollbacks[0].data["rollback"]["step"] == 2 and "rolled back to step 0" in rollbacks[0].message
    assert rollbacks[0].data["rollback"]["lr"] == 1.0
