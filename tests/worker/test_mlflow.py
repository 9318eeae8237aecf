"""MLflow tracking from the worker, against a real ``mlflow server`` (SQLite backend, local artifacts) that a
fixture starts once per session on a free port; the runs are read back with ``MlflowClient``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from app.db.session import transaction
from app.repositories import job_records
from app.schemas.jobs import JobCreate
from app.services.jobs import create_job
from app.services.projects import get_or_create_project
from tests.app.servers import free_port
from tests.worker.conftest import job_spec, read, upload_ready_dataset
from worker.runner import JobRunner
from worker.tracking import JOB_TAG, MlflowTracker


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow is not None, "mlflow is a dev dependency"
    command = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)
    yield url
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def _submit(services, dataset_id: str, experiment: str) -> str:
    mlflow = {"type": "mlflow", "mlflow": {"experiment": experiment, "run_name": "colours", "tags": {"team": "cv"}}}
    request = JobCreate(spec=job_spec(dataset_id), name="colour run", integrations=[mlflow])
    with transaction(services.factory) as session:
        project = get_or_create_project(session, "default")
        job, _ = create_job(session, services.queue, services.settings, project.id, request)
        return job.id


def _warnings(services, job_id: str) -> list[str]:
    rows, _ = read(services, lambda s: job_records.events_page(s, job_id, types=["warning"], after=None, limit=100))
    return [row.message for row in rows]


# Tracking is the worker's and the same whatever the service's database: one backend keeps the suite short.
ONE_BACKEND = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@ONE_BACKEND
def test_a_tracked_job_logs_params_metrics_per_epoch_and_artifacts(services, colour_archive, mlflow_url):
    services.settings = services.settings.model_copy(update={"mlflow_tracking_uri": mlflow_url})
    dataset_id = upload_ready_dataset(services, colour_archive)
    job_id = _submit(services, dataset_id, f"colours-{services.settings.database_url[:10]}")
    assert JobRunner(services, job_id, threading.Event()).run() == "succeeded"
    assert _warnings(services, job_id) == []

    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name(f"colours-{services.settings.database_url[:10]}")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_id}'")
    assert run.info.status == "FINISHED" and run.info.run_name == "colours"
    assert run.data.tags["team"] == "cv"
    params = run.data.params
    assert params["backbone.name"] == "resnet18" and float(params["optimizer.lr"]) == 0.02
    assert params["training.epochs"] == "2" and params["data.dataset"] == dataset_id
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [point.step for point in history] == [1, 2]
    epochs = read(services, job_records.epochs, job_id)
    assert [point.value for point in history] == pytest.approx([row.metrics["val_loss"] for row in epochs])
    assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} == {"model.json", "model.safetensors"}


@ONE_BACKEND
def test_an_unreachable_tracking_server_warns_and_the_job_still_succeeds(services, colour_archive):
    services.settings = services.settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    dataset_id = upload_ready_dataset(services, colour_archive)
    job_id = _submit(services, dataset_id, "nowhere")
    assert JobRunner(services, job_id, threading.Event()).run() == "succeeded"
    warnings = _warnings(services, job_id)
    assert len(warnings) == 3  # each epoch, then the end
    assert all(message.startswith("MLflow tracking failed") for message in warnings)
    assert "retrying at the next epoch" in warnings[0] and "left unfinished" in warnings[-1]


def test_what_failed_to_log_is_logged_with_the_next_epoch(mlflow_url):
    spec = {"backbone": {"name": "resnet18"}, "optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}}
    tracker = MlflowTracker(f"http://127.0.0.1:{free_port()}", "ftjob_RETRY", {"experiment": "retries"}, spec, None)
    assert tracker.log_epoch({"epoch": 1, "train_loss": 2.0}).startswith("MLflow tracking failed (epoch 1")
    tracker.tracking_uri, tracker._client = mlflow_url, None  # the server is back
    assert tracker.log_epoch({"epoch": 2, "train_loss": 1.0}) is None
    assert tracker.finish("cancelled") is None
    client = MlflowClient(tracking_uri=mlflow_url)
    run = client.get_run(tracker.run_id)
    assert [(p.step, p.value) for p in client.get_metric_history(tracker.run_id, "train_loss")] == [(1, 2.0), (2, 1.0)]
    assert run.data.params["optimizer.betas"] == "[0.9, 0.99]" and run.info.status == "KILLED"
