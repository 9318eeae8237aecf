"""A sweep end to end: a grid over learning rates on two CIFAR-10 classes, where most rates are far too small
to learn anything.

In the embedded mode (``finetune serve``: SQLite, the file broker, a worker child), with ASHA the bad trials
are pruned at their first rung and the sweep spends clearly fewer epochs than the same trials unpruned; the
best trial is the rate that works. In the production form (tests/integration/stack.py: PostgreSQL, Redis, a
real Celery worker) the same happens through Optuna's study in PostgreSQL's ``optuna`` schema, whose trial
states match the jobs'."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.settings import Settings
from app.sweeps import study
from tests.app.servers import REPO, free_port
from tests.cifar import make_cifar_subset
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow

WORKS, TOO_SMALL = 2e-3, [1e-7, 3e-7, 1e-6]  # Adam's learning rates: the first learns, the others cannot
EPOCHS = 4
ASHA = {"type": "asha", "min_epochs": 1, "reduction_factor": 2}  # rungs at epochs 1, 2 and 4


@pytest.fixture(scope="module")
def stack(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The production form, with a lease long enough that a worker starved by a loaded machine keeps it (a
    lost lease costs a trial an attempt, and its epochs once more)."""
    with running_stack(postgres_url, redis_url, tmp_path_factory.mktemp("stack"), FT_LEASE_SECONDS="8") as built:
        yield built


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of 40 train images each of airplanes and frogs (sky against grass: learnable in a few epochs)."""
    root = make_cifar_subset(tmp_path_factory.mktemp("cifar") / "cifar2", per_class=40, splits=("train",))
    for folder in (root / "train").iterdir():
        if folder.name not in ("airplane", "frog"):
            shutil.rmtree(folder)
    return Path(shutil.make_archive(str(root), "zip", root))


def sweep_body(
    dataset: str, early_stopping: dict[str, Any] | None, too_small: list[float] = TOO_SMALL
) -> dict[str, Any]:
    return {
        "spec": {
            "backbone": {"name": "resnet18"},
            "data": {"dataset": dataset, "image_size": 16, "batch_size": 16, "val_split": 0, "num_workers": 0},
            "optimizer": {"name": "adam"},
            "scheduler": {"name": "constant"},
            "training": {"epochs": EPOCHS, "precision": "fp32", "log_every_steps": 50},
        },
        "space": {"optimizer.lr": {"grid": [WORKS, *too_small]}},  # the same trials in the same order, both sweeps
        "algorithm": "grid",
        # Train accuracy: Adam's loss spikes in its first epochs even where it learns; its accuracy does not.
        "objective": {"metric": "train_acc", "mode": "max"},
        "max_trials": 1 + len(too_small),
        "max_parallel": 1,
        "early_stopping": early_stopping,
    }


def test_asha_prunes_the_learning_rates_that_fail(two_classes, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(tmp_path / "home")}
    env["OMP_NUM_THREADS"] = "1"  # a shared CI machine: one thread per process, not one per core each
    log = (tmp_path / "serve.log").open("wb")
    # Two training workers: the two sweeps run side by side (each keeps one trial at a time, max_parallel 1),
    # one core each, instead of the second waiting for the whole of the first.
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", "2"]
    serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_ready(client, serve, tmp_path)
            ds = upload(client, two_classes)
            pruned_id = submit(client, sweep_body(ds, ASHA))
            unpruned_id = submit(client, sweep_body(ds, None))
            pruned, unpruned = wait_done(client, pruned_id, tmp_path), wait_done(client, unpruned_id, tmp_path)
            ends = {t["job_id"]: last_status_event(client, t["job_id"]) for t in pruned["trials"]}
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(60)

    epochs_pruned = sum(trial["epochs"] for trial in pruned["trials"])
    epochs_unpruned = sum(trial["epochs"] for trial in unpruned["trials"])
    print(f"\nepochs with ASHA: {epochs_pruned}, without pruning: {epochs_unpruned}")
    print({t["params"]["optimizer.lr"]: (t["status"], t["epochs"], t["objective"]) for t in pruned["trials"]})
    assert unpruned["trial_counts"] == {"succeeded": 4} and epochs_unpruned == 4 * EPOCHS
    assert pruned["status"] == "succeeded" and len(pruned["trials"]) == 4
    assert pruned["trial_counts"] == {"succeeded": 1, "pruned": 3}, pruned["trial_counts"]
    for trial in pruned["trials"]:
        if trial["status"] == "pruned":
            assert trial["epochs"] in (1, 2)  # stopped at a rung
            assert ends[trial["job_id"]]["data"]["epoch"] == trial["epochs"], ends[trial["job_id"]]
    assert epochs_pruned <= 0.6 * epochs_unpruned
    for sweep in (pruned, unpruned):
        assert sweep["best_trial"]["params"]["optimizer.lr"] == WORKS
        assert sweep["best_trial"]["spec"]["optimizer"]["lr"] == WORKS


def test_asha_prunes_through_postgresql_with_a_celery_worker(stack: Stack, two_classes: Path) -> None:
    """The production form: each epoch's report and the prune go through Optuna's study in PostgreSQL, from
    a real Celery worker; Optuna's trial states there match the jobs'."""
    stack.start_worker(env={"OMP_NUM_THREADS": "1"})
    with stack.client() as client:
        ds = upload(client, two_classes)
        sweep_id = submit(client, sweep_body(ds, ASHA, too_small=TOO_SMALL[:2]))
        sweep = wait_done(client, sweep_id, stack.home)
        ends = {t["job_id"]: last_status_event(client, t["job_id"]) for t in sweep["trials"]}

    print({t["params"]["optimizer.lr"]: (t["status"], t["epochs"], t["objective"]) for t in sweep["trials"]})
    assert sweep["status"] == "succeeded" and sweep["trial_counts"] == {"succeeded": 1, "pruned": 2}, sweep
    assert sweep["best_trial"]["params"]["optimizer.lr"] == WORKS
    for trial in sweep["trials"]:
        if trial["status"] == "pruned":
            assert trial["epochs"] in (1, 2), trial  # stopped at a rung
            assert ends[trial["job_id"]]["data"]["epoch"] == trial["epochs"], ends[trial["job_id"]]

    # Optuna's own record, read from PostgreSQL's optuna schema as the worker and the API wrote it
    import optuna

    storage = study.storage_for(Settings(database_url=stack.env["FT_DATABASE_URL"]))
    try:
        found = optuna.load_study(study_name=sweep_id, storage=storage)
        with storage.engine.connect() as connection:
            where = "SELECT table_schema FROM information_schema.tables WHERE table_name = 'trials'"
            assert connection.execute(text(where)).scalars().all() == ["optuna"]  # none among the service's tables
    finally:
        storage.engine.dispose()
    states = {trial.number: trial.state.name for trial in found.trials}
    expected = {"succeeded": "COMPLETE", "pruned": "PRUNED"}
    assert states == {t["number"]: expected[t["status"]] for t in sweep["trials"]}, (states, sweep["trials"])
    assert found.best_trial.params == {"optimizer.lr": WORKS}
    for trial in found.trials:
        if trial.state.name == "PRUNED":  # the worker reported every epoch it trained, up to the prune
            assert sorted(trial.intermediate_values) == list(range(1, max(trial.intermediate_values) + 1))


def upload(client: httpx.Client, archive: Path) -> str:
    """The dataset uploaded and validated to ready."""
    with archive.open("rb") as file:
        created = client.post("/v1/datasets", files={"file": (archive.name, file)})
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 120
    while (shown := client.get(f"/v1/datasets/{created.json()['id']}").json())["status"] == "validating":
        assert time.monotonic() < deadline, "validation did not finish"
        time.sleep(0.3)
    assert shown["status"] == "ready", shown
    return str(shown["id"])


def wait_ready(client: httpx.Client, serve: subprocess.Popen[bytes], tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(0.3)


def last_status_event(client: httpx.Client, job_id: str) -> dict[str, Any]:
    events = client.get(f"/v1/jobs/{job_id}/events", params={"type": "status"}).json()["data"]
    return dict(events[-1])


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_done(client: httpx.Client, sweep_id: str, logs: Path, timeout: float = 900) -> dict[str, Any]:
    """The sweep once it ended; ``logs``: the folder of the processes' logs, shown if it does not end."""
    deadline = time.monotonic() + timeout
    while (sweep := client.get(f"/v1/sweeps/{sweep_id}").json())["status"] == "running":
        if time.monotonic() > deadline:
            tails = "\n".join(path.read_text()[-3000:] for path in sorted(logs.glob("*.log")))
            raise AssertionError(f"sweep {sweep_id} still running after {timeout}s: {sweep}\n{tails}")
        time.sleep(1)
    return dict(sweep)
