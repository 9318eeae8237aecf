"""A sweep end to end in the embedded mode (``finetune serve``: SQLite, the file broker, a worker child):
a grid over learning rates on two CIFAR-10 classes, where most rates are far too small to learn anything.
With ASHA the bad trials are pruned at their first rung and the sweep spends clearly fewer epochs than the
same trials unpruned; the best trial is the rate that works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.servers import REPO, free_port
from tests.cifar import make_cifar_subset

pytestmark = pytest.mark.slow

WORKS, TOO_SMALL = 2e-3, [1e-7, 3e-7, 1e-6]  # Adam's learning rates: the first learns, the others cannot
EPOCHS = 4


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of 40 train images each of airplanes and frogs (sky against grass: learnable in a few epochs)."""
    root = make_cifar_subset(tmp_path_factory.mktemp("cifar") / "cifar2", per_class=40, splits=("train",))
    for folder in (root / "train").iterdir():
        if folder.name not in ("airplane", "frog"):
            shutil.rmtree(folder)
    return Path(shutil.make_archive(str(root), "zip", root))


def sweep_body(dataset: str, early_stopping: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "spec": {
            "backbone": {"name": "resnet18"},
            "data": {"dataset": dataset, "image_size": 16, "batch_size": 16, "val_split": 0, "num_workers": 0},
            "optimizer": {"name": "adam"},
            "scheduler": {"name": "constant"},
            "training": {"epochs": EPOCHS, "precision": "fp32", "log_every_steps": 50},
        },
        "space": {"optimizer.lr": {"grid": [WORKS, *TOO_SMALL]}},  # the same trials in the same order, both sweeps
        "algorithm": "grid",
        # Train accuracy: Adam's loss spikes in its first epochs even where it learns; its accuracy does not.
        "objective": {"metric": "train_acc", "mode": "max"},
        "max_trials": 4,
        "max_parallel": 1,
        "early_stopping": early_stopping,
    }


def test_asha_prunes_the_learning_rates_that_fail(two_classes, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")} | {"FT_HOME": str(tmp_path / "home")}
    env["OMP_NUM_THREADS"] = "1"  # a shared CI machine: one thread per process, not one per core each
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", "1"]
    serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_ready(client, serve, tmp_path)
            with two_classes.open("rb") as archive:
                ds = client.post("/v1/datasets", files={"file": ("cifar2.zip", archive)}).json()["id"]
            while client.get(f"/v1/datasets/{ds}").json()["status"] == "validating":
                time.sleep(0.3)
            asha = {"type": "asha", "min_epochs": 1, "reduction_factor": 2}  # rungs at epochs 1, 2 and 4
            pruned_id = submit(client, sweep_body(ds, asha))
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


def wait_done(client: httpx.Client, sweep_id: str, tmp_path: Path, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (sweep := client.get(f"/v1/sweeps/{sweep_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, (sweep, (tmp_path / "serve.log").read_text()[-3000:])
        time.sleep(1)
    return dict(sweep)
