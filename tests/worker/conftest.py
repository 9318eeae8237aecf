"""The worker's tests run the real runner (the task's body, in this process) on the real database of both
backends, with a data set uploaded to the real store and validated as the validation task does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.context import Runtime
from app.db.session import transaction
from app.ids import new_id
from app.schemas.jobs import JobCreate
from app.services.dataset_validation import run_dataset_validation
from app.services.datasets import create_dataset
from app.services.jobs import create_job
from app.services.projects import get_or_create_project
from app.settings import Settings
from tests.app.conftest import backend, backend_engine, settings  # noqa: F401 (fixtures)
from tests.training.conftest import write_colour_set
from training.spec import Spec


@pytest.fixture(scope="session")
def colour_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine tests' colour set (3 classes, 24 train and 6 test images each, 16 px), zipped."""
    root = write_colour_set(tmp_path_factory.mktemp("colours"), {"train": 24, "test": 6})
    return Path(shutil.make_archive(str(root.parent / "colours"), "zip", root))


@pytest.fixture
def services(settings: Settings) -> Iterator[Runtime]:  # noqa: F811
    quick = settings.model_copy(update={"lease_seconds": 5.0, "lease_renew_seconds": 1.0, "cancel_poll_seconds": 0.1})
    built = Runtime.from_settings(quick)
    yield built
    built.close()


def upload_ready_dataset(services: Runtime, archive: Path) -> str:
    with transaction(services.factory) as session:
        project = get_or_create_project(session, "default")
        dataset_id = new_id("dataset")
        with archive.open("rb") as file:
            stored = services.store.put(f"datasets/{dataset_id}/{archive.name}", file)
        create_dataset(
            session,
            services.store,
            services.queue,
            project.id,
            dataset_id=dataset_id,
            name=None,
            filename=archive.name,
            stored=stored,
        )
    assert run_dataset_validation(services.factory, services.store, services.settings, dataset_id) == "ready"
    return dataset_id


def job_spec(dataset_id: str, **sections: Any) -> Spec:
    spec: dict[str, Any] = {
        "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset_id, "image_size": 16, "batch_size": 8, "val_split": 0.25},
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
        "training": {"epochs": 2, "seed": 0, "deterministic": True, "log_every_steps": 2, "precision": "fp32"},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return Spec.model_validate(spec)


def submit(services: Runtime, spec: Spec, name: str | None = None) -> str:
    with transaction(services.factory) as session:
        project = get_or_create_project(session, "default")
        job, _ = create_job(session, services.queue, services.settings, project.id, JobCreate(spec=spec, name=name))
        return job.id


def read(services: Runtime, fn: Any, *args: Any) -> Any:
    with transaction(services.factory) as session:
        return fn(session, *args)


def get_job(session: Session, job_id: str) -> Any:
    from app.repositories import jobs

    job = jobs.get_any(session, job_id)
    session.expunge(job)
    return job


def artifact_key(services: Runtime, job_id: str, name: str) -> str:
    """The store key of a job's registered artifact (under the key of the attempt that published it)."""
    from app.repositories import job_records

    artifact = read(services, job_records.artifact, job_id, name)
    assert artifact is not None, f"job {job_id} has no artifact {name}"
    return str(artifact.store_key)
