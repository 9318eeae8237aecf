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


def make_job(session: Session, *, project: str = "default", max_attempts: int = 3, epochs: int = 3) -> Job:
    """A queued job on a ready data set, as ``create_job`` leaves it."""
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
        class_names=["a", "b"],
        counts={"train": {"a": 2, "b": 2}},
        created_at=utcnow(),
    )
    session.add(dataset)
    spec = Spec.model_validate({"data": {"dataset": dataset.id}, "training": {"epochs": epochs}})
    now = utcnow()
    job = Job(
        id=new_id("job"),
        project_id=owner.id,
        dataset_id=dataset.id,
        spec=spec.model_dump(mode="json"),
        status=JobStatus.QUEUED,
        attempt=0,
        max_attempts=max_attempts,
        event_seq=0,
        epochs_completed=0,
        attempt_start_epoch=0,
        total_epochs=epochs,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    job_state.record_created(session, job)
    return job
