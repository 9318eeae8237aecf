"""Rows for service tests, written through the ORM into the real database."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Dataset, Job
from app.ids import new_id
from app.services import job_state
from app.services.projects import get_or_create_project
from app.statuses import DatasetStatus, JobStatus
from training.spec import Spec


def make_ready_dataset(session: Session, *, project: str = "default", per_class: dict[str, int]) -> Dataset:
    """A ready data set row (no archive behind it) with ``per_class`` training images."""
    owner = get_or_create_project(session, project)
    dataset = Dataset(
        id=new_id("dataset"),
        project_id=owner.id,
        name="set",
        status=DatasetStatus.READY,
        filename="set.zip",
        store_key="datasets/x/set.zip",
        bytes=1,
        sha256="0" * 64,
        class_names=list(per_class),
        counts={"train": dict(per_class)},
        created_at=utcnow(),
    )
    session.add(dataset)
    return dataset


def make_job(session: Session, *, project: str = "default", max_attempts: int = 3, epochs: int = 3) -> Job:
    """A queued job on a ready data set, as ``create_job`` leaves it."""
    dataset = make_ready_dataset(session, project=project, per_class={"a": 2, "b": 2})
    spec = Spec.model_validate({"data": {"dataset": dataset.id}, "training": {"epochs": epochs}})
    now = utcnow()
    job = Job(
        id=new_id("job"),
        project_id=dataset.project_id,
        dataset_id=dataset.id,
        spec=spec.model_dump(mode="json"),
        status=JobStatus.QUEUED,
        attempt=0,
        max_attempts=max_attempts,
        event_seq=1,  # its first event, written below
        epochs_completed=0,
        attempt_start_epoch=0,
        total_epochs=epochs,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    job_state.record_created(session, [job])
    return job
