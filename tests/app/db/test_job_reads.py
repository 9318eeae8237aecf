"""``jobs.get_record``: a job as the API shows it, read in one Core statement, matches what the ORM loads,
on both backends (metadata as an object and artifact names in name order, from aggregated subqueries)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.models import Artifact, JobMetadata
from app.ids import new_id
from app.repositories import jobs
from tests.app.factories import make_job

FIELDS = [
    "id", "name", "status", "dataset_id", "metadata_dict", "attempt", "max_attempts", "total_epochs",
    "epochs_completed", "attempt_start_epoch", "attempt_started_at", "latest_metrics", "best_metrics",
    "final_metrics", "test_metrics", "error_code", "error_message", "integrations", "sweep_id", "created_at",
    "updated_at", "started_at", "finished_at",
]  # fmt: skip


def test_a_record_is_the_rows_fields_in_one_statement(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        job = make_job(session)
        job.name = "cats-vs-dogs"
        job.status = "succeeded"
        job.latest_metrics = {"epoch": 3, "val_acc": 0.75, "nested": {"a": [1, 2]}}
        job.best_metrics = {"epoch": 2, "val_acc": 0.8}
        job.integrations = [{"type": "mlflow", "mlflow": {"experiment": "e", "run_name": None, "tags": {}}}]
        job.started_at = job.attempt_started_at = utcnow() - timedelta(minutes=3)
        job.finished_at = utcnow()
        for key, value in {"team": "vision", "a.key": "ünïcode ✓", "z": ""}.items():
            session.add(JobMetadata(job_id=job.id, key=key, value=value))
        for name in ("model.safetensors", "card.md", "model.json"):
            session.add(
                Artifact(
                    id=new_id("artifact"), job_id=job.id, name=name, store_key=f"k/{name}", bytes=1, sha256="0" * 64
                )
            )
        session.flush()
        project_id, job_id, spec = job.project_id, job.id, job.spec
    bare = make_job_without_children(factory)
    with factory() as session:
        row = jobs.get(session, project_id, job_id)
        assert row is not None
        expected = {name: getattr(row, name) for name in FIELDS}
        statements: list[str] = []
        connection = session.connection()
        event.listen(connection, "before_cursor_execute", lambda *args: statements.append(args[2]))
        record = jobs.get_record(connection, project_id, job_id, with_spec=False)
        assert record is not None and len(statements) == 1
        assert {name: getattr(record, name) for name in FIELDS} == expected
        assert (
            record.artifact_names == ["card.md", "model.json", "model.safetensors"] == [a.name for a in row.artifacts]
        )
        assert record.metadata_dict == {"a.key": "ünïcode ✓", "team": "vision", "z": ""}
        assert record.spec is None
        with_spec = jobs.get_record(connection, project_id, job_id, with_spec=True)
        assert with_spec is not None and with_spec.spec == spec
        empty = jobs.get_record(connection, bare[0], bare[1], with_spec=False)
        assert empty is not None and empty.metadata_dict == {} and empty.artifact_names == []
        assert jobs.get_record(connection, bare[0], job_id, with_spec=False) is None  # another project's job
        assert jobs.get_record(connection, project_id, "ftjob_missing", with_spec=False) is None


def make_job_without_children(factory: sessionmaker[Session]) -> tuple[str, str]:
    with factory.begin() as session:
        job = make_job(session, project="other")
        return job.project_id, job.id


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_driver_error_is_sqlalchemys_and_invalidates_the_connection(factory: sessionmaker[Session]) -> None:
    """The statement runs on the driver's cursor; when the driver fails, it runs once more through SQLAlchemy,
    whose error the caller gets, and whose handling drops a connection the server closed."""
    with factory.begin() as session:
        job = make_job(session)
        project_id, job_id = job.project_id, job.id
    engine = factory.kw["bind"]
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as raised:
            jobs.get_record(connection, project_id, job_id, with_spec=False)
        assert raised.value.connection_invalidated
    with engine.connect() as connection:  # a new connection in its place
        assert jobs.get_record(connection, project_id, job_id, with_spec=False) is not None
