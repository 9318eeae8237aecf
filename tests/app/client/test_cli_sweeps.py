"""``finetune sweeps submit|get|list|cancel`` against the real API, and the client's sweep methods (sync and
async): the example sweep submitted on an uploaded data set, a bad space naming its path (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from app.client import AsyncClient, Client
from app.client.models import SweepStatus
from cli.main import main
from tests.app.client import worker_side
from tests.app.client.server import REPO

EXAMPLE = REPO / "examples" / "sweeps" / "cifar10-lr-sweep.yaml"


@pytest.fixture
def finetune(api_server, api_key):
    runner = CliRunner()

    def invoke(*args: str):
        env = {"FT_API_URL": api_server.url, "FT_API_KEY": api_key, "TTY_COMPATIBLE": "0"}
        return runner.invoke(main, list(args), env=env)

    return invoke


def test_sweeps_commands_submit_show_list_and_cancel(finetune, worker_factory, tmp_path):
    dataset_id = worker_side.ready_dataset(worker_factory)
    submitted = finetune("--json", "sweeps", "submit", str(EXAMPLE), "--dataset", dataset_id)
    assert submitted.exit_code == 0, submitted.stderr
    sweep = json.loads(submitted.stdout)
    assert sweep["status"] == "running" and len(sweep["trials"]) == 3  # max_parallel
    shown = finetune("sweeps", "get", sweep["id"])
    assert shown.exit_code == 0 and sweep["id"] in shown.stdout and "optimizer.lr=" in shown.stdout
    listed = finetune("sweeps", "list")
    assert listed.exit_code == 0 and sweep["id"] in listed.stdout
    cancelled = finetune("--json", "sweeps", "cancel", sweep["id"])
    assert cancelled.exit_code == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    for status, expected in (("cancelled", [sweep["id"]]), ("running", [])):
        filtered = finetune("--json", "sweeps", "list", "--status", status)
        assert filtered.exit_code == 0 and [s["id"] for s in json.loads(filtered.stdout)] == expected, filtered.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"spec": {}, "space": {"optimizer.momentum": {"choice": [0.5, 2]}}}))
    refused = finetune("sweeps", "submit", str(bad), "--dataset", dataset_id)
    assert refused.exit_code == 2 and "space.optimizer.momentum" in refused.stderr


@pytest.mark.anyio
async def test_the_clients_sweep_methods(api_server, api_key, worker_factory):
    dataset_id = worker_side.ready_dataset(worker_factory)
    body = {
        "spec": {"data": {"dataset": dataset_id}, "training": {"epochs": 2}},
        "space": {"optimizer.lr": {"grid": [0.1, 0.01]}},
        "algorithm": "grid",
        "max_parallel": 1,
    }
    with Client(api_server.url, api_key) as client:
        sweep = client.sweeps.create(body)
        assert [trial.params for trial in sweep.trials] == [{"optimizer.lr": 0.1}]
        assert client.sweeps.get(sweep.id).max_trials == 2
        assert [found.id for found in client.sweeps.list(status=["running", "succeeded"]).data] == [sweep.id]
    async with AsyncClient(api_server.url, api_key) as client:
        assert [found.id async for found in client.sweeps.list_all()] == [sweep.id]
        assert (await client.sweeps.cancel(sweep.id)).status == "cancelled"
        assert [found.id async for found in client.sweeps.list_all(status="running")] == []
        assert [found.id for found in (await client.sweeps.list(status=SweepStatus.CANCELLED)).data] == [sweep.id]
