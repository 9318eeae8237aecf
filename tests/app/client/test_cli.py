"""The ``finetune`` client commands against the real API: ``--json`` output parsed, exit codes checked
(0 success, 1 the job failed, 2 invalid input, 3 unreachable, 4 not found), ``jobs submit --dataset``
on an example spec, ``logs -f`` and ``--wait`` following a job to its end with the progress shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from app.db.models import Dataset
from app.db.session import transaction
from app.services.dataset_validation import run_dataset_validation
from app.statuses import DatasetStatus, JobStatus
from app.store import LocalArtifactStore
from cli.main import main
from tests.app.client import worker_side
from tests.app.client.server import REPO, free_port
from tests.app.helpers import image_tree, zip_bytes

EXAMPLE = REPO / "examples" / "cifar10-resnet18.yaml"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """What a terminal shows, escape sequences left out."""
    return ANSI.sub("", text)


@pytest.fixture
def finetune(api_server, api_key) -> Callable[..., Result]:
    """``finetune ARGS...`` in this process, against the test server."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        base = {"FT_API_URL": api_server.url, "FT_API_KEY": api_key, "TTY_COMPATIBLE": "0"}
        return runner.invoke(main, list(args), env=base | (env or {}))

    return invoke


def in_background(work: Callable[[], None], delay: float = 0.3) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        work()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def validator(api_server, worker_factory) -> Iterator[None]:
    """The cpu worker's part: validate every uploaded data set that waits for it."""
    stop = threading.Event()
    store = LocalArtifactStore(api_server.settings.artifacts_path)

    def validate_waiting() -> None:
        while not stop.wait(0.05):
            with transaction(worker_factory) as session:
                waiting = session.scalars(select(Dataset.id).where(Dataset.status == DatasetStatus.VALIDATING)).all()
            for dataset_id in waiting:
                run_dataset_validation(worker_factory, store, api_server.settings, dataset_id)

    thread = threading.Thread(target=validate_waiting, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


# --- startup --------------------------------------------------------------------------------

PROBE = """
import json, sys, time
started = time.perf_counter()
from cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "torchvision", "sqlalchemy", "celery", "fastapi") if m in sys.modules)
    print(json.dumps({"seconds": time.perf_counter() - started, "heavy": heavy}), file=sys.stderr)
"""


def probe(*args: str) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO, check=True)
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def test_help_documents_the_exit_codes_and_starts_without_heavy_imports():
    out, measured = probe("--help")
    assert "Exit codes" in out and "cannot reach the server" in out and "not found" in out
    assert "datasets" in out and "jobs" in out and "serve" in out and "worker" in out
    assert measured["heavy"] == []
    assert measured["seconds"] < 0.5, measured


def test_a_client_command_imports_no_torch(api_server, api_key):
    out, measured = probe("--url", api_server.url, "--api-key", api_key, "--json", "jobs", "list")
    assert json.loads(out) == []
    assert measured["heavy"] == []
    assert measured["seconds"] < 1.5, measured


# --- exit codes -----------------------------------------------------------------------------


def test_get_prints_the_job_as_json_and_a_missing_one_exits_4(finetune, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    shown = finetune("--json", "jobs", "get", job_id)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id
    missing = finetune("jobs", "get", "ftjob_nope", "--json")
    assert missing.exit_code == 4
    assert missing.stdout == ""
    assert json.loads(missing.stderr)["error"]["code"] == "not_found"
    plain = finetune("datasets", "get", "ds_nope")
    assert plain.exit_code == 4 and plain.stderr.startswith("error: not_found")


def test_an_unreachable_server_exits_3(finetune):
    result = finetune("--url", f"http://127.0.0.1:{free_port()}", "jobs", "list")
    assert result.exit_code == 3
    assert "cannot reach" in result.stderr


def test_an_invalid_spec_exits_2_naming_the_field(finetune, worker_factory, tmp_path):
    dataset_id = worker_side.ready_dataset(worker_factory)
    spec = tmp_path / "bad.json"
    spec.write_text(
        json.dumps({"data": {"dataset": dataset_id}, "scheduler": {"name": "multistep", "milestones": [9]}})
    )
    result = finetune("jobs", "submit", str(spec))
    assert result.exit_code == 2
    assert "spec.scheduler.milestones" in result.stderr
    local_path = finetune("jobs", "submit", str(EXAMPLE))  # data.path means nothing to the server
    assert local_path.exit_code == 2 and "--dataset" in local_path.stderr
    bad_pair = finetune("jobs", "submit", str(EXAMPLE), "--metadata", "no-equals-sign")
    assert bad_pair.exit_code == 2 and "key=value" in bad_pair.stderr
    not_yaml = tmp_path / "list.yaml"
    not_yaml.write_text("- a\n- b\n")
    assert finetune("jobs", "submit", str(not_yaml)).exit_code == 2


# --- jobs -----------------------------------------------------------------------------------


def test_submit_with_dataset_rewrites_an_example_spec(finetune, worker_factory):
    dataset_id = worker_side.ready_dataset(worker_factory)
    result = finetune(
        "--json", "jobs", "submit", str(EXAMPLE), "--dataset", dataset_id, "--name", "cifar",
        "--metadata", "team=vision", "--metadata", "run=7",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "queued" and job["name"] == "cifar"
    assert job["metadata"] == {"team": "vision", "run": "7"}
    assert job["spec"]["data"]["dataset"] == dataset_id and job["spec"]["data"]["path"] is None
    assert job["spec"]["data"]["subset_per_class"] == 100  # the rest of the example is kept
    assert job["spec"]["scheduler"]["name"] == "cosine"
    listed = finetune("jobs", "list", "--json", "--status", "queued", "--metadata", "team=vision")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    table = finetune("jobs", "list")
    assert table.exit_code == 0 and job["id"] in table.stdout and "cifar" in table.stdout
    paused = finetune("jobs", "pause", job["id"])
    assert paused.exit_code == 0 and paused.stdout.strip() == f"{job['id']} paused"
    resumed = finetune("--json", "jobs", "resume", job["id"])
    assert json.loads(resumed.stdout)["status"] == "queued"
    cancelled = finetune("--json", "jobs", "cancel", job["id"])
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    refused = finetune("jobs", "resume", job["id"])
    assert refused.exit_code != 0 and "only a paused job can be resumed" in refused.stderr
    again = finetune("jobs", "get", job["id"])
    assert again.exit_code == 0 and "cancelled" in again.stdout and "resnet18" in again.stdout


def test_logs_follow_shows_the_progress_live_and_ends_at_the_terminal_event(finetune, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker = in_background(lambda: worker_side.run(worker_factory, job_id))
    result = finetune("jobs", "logs", job_id, "-f", env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    worker.join()
    assert result.exit_code == 0, result.stderr
    bar = plain(result.stderr)  # the live bar, drawn on the terminal
    assert "epoch 2/2" in bar and "step 8/8" in bar
    assert "loss 0.25" in bar and "acc 0.65" in bar and "lr 0.01" in bar and "ETA" in bar
    assert "epoch 1: train_loss" not in result.stdout  # lines and bar share the terminal: lines go above the bar
    assert "job succeeded" in bar
    summary = plain(result.stdout)
    assert "epochs" in summary and "results" in summary
    assert summary.count("test_acc") == 1  # once, though the final metrics and the test result both hold it
    assert f"job {job_id} succeeded" in summary


def test_logs_follow_without_a_terminal_prints_each_event_and_exits_1_for_a_failed_job(finetune, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker = in_background(lambda: worker_side.run(worker_factory, job_id, status=JobStatus.FAILED))
    result = finetune("jobs", "logs", job_id, "--follow")
    worker.join()
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any("step 8/8 of epoch 2: loss 0.25" in line for line in lines)
    assert any("epoch 2: train_loss 0.5" in line for line in lines)
    assert "non_finite_loss" in result.stdout and "failed" in lines[-1]


def test_logs_prints_the_recorded_events_as_json_lines(finetune, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker_side.run(worker_factory, job_id)
    result = finetune("jobs", "logs", job_id, "--json")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["data"]["to"] == "succeeded"


def test_submit_wait_prints_only_the_final_job_and_exits_by_its_outcome(finetune, worker_factory):
    dataset_id = worker_side.ready_dataset(worker_factory)

    def run_the_newest_job(status: JobStatus) -> Callable[[], None]:
        def work() -> None:
            with transaction(worker_factory) as session:
                from app.db.models import Job

                job_id = session.scalars(select(Job.id).order_by(Job.created_at.desc())).first()
            worker_side.run(worker_factory, job_id, epochs=1, status=status)

        return work

    failing = in_background(run_the_newest_job(JobStatus.FAILED), delay=0.5)
    result = finetune("--json", "jobs", "submit", str(EXAMPLE), "--dataset", dataset_id, "--wait")
    failing.join()
    assert result.exit_code == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "failed" and job["error"]["code"] == "non_finite_loss"


def test_download_writes_the_checked_weights_and_a_missing_artifact_exits_4(
    finetune, api_server, worker_factory, tmp_path
):
    job_id = worker_side.queued_job(worker_factory)
    worker_side.run(worker_factory, job_id)
    stored = worker_side.publish(worker_factory, api_server, job_id, "model.safetensors", b"weights" * 1000)
    result = finetune("--json", "jobs", "download", job_id, "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    done = json.loads(result.stdout)
    assert Path(done["path"]) == tmp_path / f"{job_id}.safetensors"
    assert done["sha256"] == stored.sha256 and Path(done["path"]).read_bytes() == b"weights" * 1000
    missing = finetune("jobs", "download", job_id, "--artifact", "model.json")
    assert missing.exit_code == 4 and "model.safetensors" in missing.stderr


# --- data sets ------------------------------------------------------------------------------


def test_upload_wait_exits_0_when_ready_and_1_with_the_reasons(finetune, validator, tmp_path):
    good = tmp_path / "pets.zip"
    good.write_bytes(zip_bytes(image_tree(("cat", "dog"), per_class=2)))
    ready = finetune("datasets", "upload", str(good), "--name", "pets", "--wait")
    assert ready.exit_code == 0, ready.stderr
    assert "ready" in ready.stdout and "cat" in ready.stdout and "dog" in ready.stdout
    bad = tmp_path / "one-class.zip"
    bad.write_bytes(zip_bytes(image_tree(("cat",), per_class=2)))
    failed = finetune("--json", "datasets", "upload", str(bad), "--wait")
    assert failed.exit_code == 1
    shown = json.loads(failed.stdout)
    assert shown["status"] == "failed" and shown["error"]["reasons"]
    listed = finetune("--json", "datasets", "list")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["one-class.zip", "pets"]
    got = finetune("datasets", "get", shown["id"])
    assert got.exit_code == 0 and shown["error"]["reasons"][0][:40] in got.stdout


# --- exports --------------------------------------------------------------------------------


def finish_export_when_queued(factory, job_id: str, **values) -> threading.Thread:
    """The export task's part: the queued export of ``job_id`` ends with ``values``."""
    from sqlalchemy import update

    from app.db.models import JobExport

    def work() -> None:
        for _ in range(200):
            with transaction(factory) as session:
                done = session.execute(
                    update(JobExport).where(JobExport.job_id == job_id, JobExport.status == "queued").values(**values)
                ).rowcount
            if done:
                return
            time.sleep(0.05)

    return in_background(work, delay=0.0)


def test_jobs_export_waits_for_the_parity_check_and_exits_by_its_outcome(finetune, worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    refused = finetune("jobs", "export", job_id, "--format", "onnx")
    assert refused.exit_code == 1 and "only a succeeded job's weights can be exported" in refused.stderr
    worker_side.run(worker_factory, job_id)

    entry = {"file": "model.onnx", "parity": {"images": 32, "max_abs_diff": 1.3e-6, "tolerance": 1e-4}}
    thread = finish_export_when_queued(worker_factory, job_id, status="succeeded", parity=entry)
    made = finetune("jobs", "export", job_id, "--format", "onnx", "--wait", "--poll", "0.1")
    thread.join()
    assert made.exit_code == 0, made.stderr
    assert re.search(r"exp_\w+ succeeded: model.onnx, max \|logit difference\| 1.3e-06 on 32", made.stdout)

    message = "the torchscript export differs from the PyTorch model: max |logit difference| 0.01 on 32 images"
    failure = {"status": "failed", "error_code": "export_parity_failed", "error_message": message}
    thread = finish_export_when_queued(worker_factory, job_id, **failure)
    failed = finetune("--json", "jobs", "export", job_id, "--format", "torchscript", "--wait", "--poll", "0.1")
    thread.join()
    assert failed.exit_code == 1 and "export_parity_failed" in failed.stderr and "0.01" in failed.stderr
