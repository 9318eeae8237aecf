"""What a worker writes while it runs a job, written by the test instead, with the same service
functions: the claim, step and epoch metrics, artifacts, the end. No worker process, no torch."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.models import Dataset
from app.db.session import transaction
from app.ids import new_id
from app.services import job_records, job_state
from app.services.projects import get_or_create_project
from app.statuses import DatasetStatus, JobStatus
from app.store import LocalArtifactStore, StoredObject
from tests.app.client.server import PROJECT, ApiServer
from tests.app.factories import make_job

OWNER = "test-worker"
STEPS_PER_EPOCH = 4

Factory = sessionmaker[Session]


def ready_dataset(factory: Factory, name: str = "pets") -> str:
    """A validated data set of the test project, as the validation task leaves it."""
    with transaction(factory) as session:
        project = get_or_create_project(session, PROJECT)
        dataset = Dataset(
            id=new_id("dataset"),
            project_id=project.id,
            name=name,
            status=DatasetStatus.READY,
            filename=f"{name}.zip",
            store_key=f"datasets/x/{name}.zip",
            bytes=1,
            sha256="0" * 64,
            class_names=["cat", "dog"],
            counts={"train": {"cat": 8, "dog": 8}, "val": {"cat": 2, "dog": 2}},
            num_images=20,
            created_at=utcnow(),
        )
        session.add(dataset)
        return dataset.id


def queued_job(factory: Factory, epochs: int = 2) -> str:
    with transaction(factory) as session:
        return make_job(session, project=PROJECT, epochs=epochs).id


def start(factory: Factory, job_id: str) -> None:
    with transaction(factory) as session:
        assert job_state.claim_job(session, job_id, OWNER, 300)


def step(factory: Factory, job_id: str, step: int, *, epochs: int = 2, loss: float = 1.0) -> None:
    metrics = {
        "epoch": (step - 1) // STEPS_PER_EPOCH + 1,
        "step": step,
        "step_in_epoch": (step - 1) % STEPS_PER_EPOCH + 1,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "total_steps": epochs * STEPS_PER_EPOCH,
        "loss": loss,
        "lr": 0.01,
        "grad_norm": 1.0,
        "images_per_second": 100.0,
        "elapsed_seconds": 0.5,
    }
    with transaction(factory) as session:
        job_records.record_step_metrics(session, job_id, metrics, owner=OWNER)


def epoch_metrics(epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_acc": 0.5 + 0.1 * epoch,
        "val_loss": 1.2 / epoch,
        "val_acc": 0.45 + 0.1 * epoch,
        "lr": 0.01,
        "epoch_seconds": 2.5,
    }


def epoch(factory: Factory, job_id: str, number: int) -> None:
    with transaction(factory) as session:
        job_records.record_epoch_metrics(session, job_id, epoch_metrics(number), owner=OWNER)


def finish(factory: Factory, job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    error = job_state.JobError("non_finite_loss", "the loss became NaN at step 7") if status == "failed" else None
    test = {"test_loss": 0.7, "test_acc": 0.6} if status == JobStatus.SUCCEEDED else None
    # as the worker reports them: the published weights' metrics include their test-set result
    final = {"val_loss": 0.6, "val_acc": 0.65, **test} if test else None
    with transaction(factory) as session:
        assert job_state.finish_job(session, job_id, OWNER, status, error, final_metrics=final, test_metrics=test)


def run(factory: Factory, job_id: str, *, epochs: int = 2, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    """A whole run: claimed, every step and epoch, then the end."""
    start(factory, job_id)
    for number in range(1, epochs + 1):
        for at in range((number - 1) * STEPS_PER_EPOCH + 1, number * STEPS_PER_EPOCH + 1):
            step(factory, job_id, at, epochs=epochs, loss=2.0 / at)
        epoch(factory, job_id, number)
    finish(factory, job_id, status)


def checkpoint(factory: Factory, server: ApiServer, job_id: str, *, epoch: int) -> None:
    stored = LocalArtifactStore(server.settings.artifacts_path).put(f"jobs/{job_id}/epoch-{epoch}.pt", [b"state"])
    with transaction(factory) as session:
        job_records.register_checkpoint(
            session, job_id, stored, epoch=epoch, step=epoch * STEPS_PER_EPOCH, is_best=True, owner=None
        )


def publish(
    factory: Factory, server: ApiServer, job_id: str, name: str, content: bytes, *, sha256: str | None = None
) -> StoredObject:
    """An artifact of the job in the server's store; ``sha256`` registers a wrong checksum on purpose."""
    stored = LocalArtifactStore(server.settings.artifacts_path).put(f"jobs/{job_id}/{name}", [content])
    if sha256 is not None:
        stored = StoredObject(stored.key, stored.size, sha256)
    with transaction(factory) as session:
        job_records.register_artifact(session, job_id, name, stored)
    return stored
