"""A host's device slots (worker.slots): real processes compete for a fake 2-device CPU host's slots; a claim
of a process killed with SIGKILL is freed; the training task holds its job's devices for the job's whole run
and sends a job whose devices are busy back to the queue before claiming it (no attempt counted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.statuses import JobStatus
from tests.worker.conftest import get_job, job_spec, read, submit, upload_ready_dataset
from worker import tasks
from worker.slots import SLOTS_FILE, DeviceSlots

DEVICES = ["cpu0", "cpu1"]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from worker.slots import DeviceSlots

    path, count, job, release = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    slots = DeviceSlots(path, ["cpu0", "cpu1"])
    got = slots.claim(count, job)
    print("claimed" if got else "busy", ",".join(got or ()), flush=True)
    while got and not release.exists():
        time.sleep(0.05)
    slots.release()
    """
)


def hold(path: Path, count: int, job: str, release: Path) -> subprocess.Popen[str]:
    """A process that claims ``count`` slots, says so on its first line, and holds them until ``release`` exists."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(count), job, str(release)], stdout=subprocess.PIPE, text=True
    )


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_two_processes_never_hold_the_same_device_and_a_killed_holder_frees_its_slots(tmp_path: Path) -> None:
    path = tmp_path / SLOTS_FILE
    one = hold(path, 1, "job-a", tmp_path / "release-a")
    assert first_line(one) == "claimed cpu0"
    two = hold(path, 2, "job-b", tmp_path / "release-b")  # a 2-device job while a 1-device one runs
    assert first_line(two) == "busy" and two.wait(timeout=60) == 0
    three = hold(path, 1, "job-c", tmp_path / "release-c")  # the other device is free
    assert first_line(three) == "claimed cpu1"
    holders = {claim.job_id: claim.devices for claim in DeviceSlots(path, DEVICES).held()}
    assert holders == {"job-a": ("cpu0",), "job-c": ("cpu1",)}

    (tmp_path / "release-a").touch()  # job a ends: its slot goes back
    assert one.wait(timeout=60) == 0
    os.kill(three.pid, signal.SIGKILL)  # job c's process dies holding its slot
    three.wait(timeout=60)
    four = hold(path, 2, "job-d", tmp_path / "release-d")  # the stale claim is freed by the next claim
    assert first_line(four) == "claimed cpu0,cpu1"
    assert [claim.job_id for claim in DeviceSlots(path, DEVICES).held()] == ["job-d"]
    (tmp_path / "release-d").touch()
    assert four.wait(timeout=60) == 0
    assert DeviceSlots(path, DEVICES).held() == []


def test_a_claim_of_a_reused_pid_is_stale(tmp_path: Path) -> None:
    slots = DeviceSlots(tmp_path / SLOTS_FILE, DEVICES)
    assert slots.claim(2, "job-a") == ("cpu0", "cpu1")
    raw = (tmp_path / SLOTS_FILE).read_text().replace('"started": "', '"started": "1')  # another process's start
    (tmp_path / SLOTS_FILE).write_text(raw)
    assert slots.claim(2, "job-b", pid=1) == ("cpu0", "cpu1")  # job a's claim named a process that is gone
    assert slots.claim(3, "job-c", pid=2) is None  # more than the host has


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_training_task_holds_its_devices_for_the_run_and_a_busy_host_sends_the_job_back(
    services, colour_archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id = upload_ready_dataset(services, colour_archive)
    job_id = submit(services, job_spec(dataset_id, training={"devices": 2}))
    monkeypatch.setattr(tasks, "_advertised", {})
    tasks.advertise_devices(DEVICES)
    path = services.settings.home / SLOTS_FILE

    other = hold(path, 1, "job-other", tmp_path / "release")  # another worker of the host runs a 1-device job
    assert first_line(other) == "claimed cpu0"
    with tasks.device_slots_for(services, job_id) as wanted:
        assert wanted == (2, tasks.DEVICE_WAIT_SECONDS, "gpu.x2")  # back to its queue: not claimed, no attempt
    job = read(services, get_job, job_id)
    assert job.status == JobStatus.QUEUED and job.attempt == 0

    (tmp_path / "release").touch()
    assert other.wait(timeout=60) == 0
    with pytest.raises(RuntimeError, match="the run failed"), tasks.device_slots_for(services, job_id) as wanted:
        assert wanted is None
        held = DeviceSlots(path, DEVICES).held()
        assert [(c.job_id, c.devices, c.pid) for c in held] == [(job_id, ("cpu0", "cpu1"), os.getpid())]
        raise RuntimeError("the run failed")
    assert DeviceSlots(path, DEVICES).held() == []  # released whatever the ending
    start = time.monotonic()
    with tasks.device_slots_for(services, job_id) as wanted:  # free again at once
        assert wanted is None
    assert time.monotonic() - start < 30


def test_a_worker_offers_its_gpus_or_its_cpu_slots_and_takes_the_queues_up_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import click

    from cli.commands.worker import offered_devices, with_device_queues

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert offered_devices(None, None) == ["2", "5"] and offered_devices(1, 4) == ["2"]
    with pytest.raises(click.ClickException, match="sees 2 GPUs"):
        offered_devices(3, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU (and no nvidia-smi asked)
    assert offered_devices(None, None) is None  # a CPU host without FT_WORKER_DEVICES: no counting
    assert offered_devices(None, 2) == DEVICES and offered_devices(3, 2) == ["cpu0", "cpu1", "cpu2"]
    assert with_device_queues(["gpu", "cpu"], 3) == ["gpu", "cpu", "gpu.x2", "gpu.x3", "gpu.all"]
    assert with_device_queues(["gpu"], 1) == ["gpu"] and with_device_queues(["cpu"], 4) == ["cpu"]
