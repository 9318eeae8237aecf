"""Hostile archives uploaded through the real API (``finetune serve``) to a real Celery worker (a subprocess:
its parent, its pool child, and the validator the pool child starts, ``python -m training.isolated``).

Each archive ends its data set ``failed`` with the code and the limit named: a pax header over 64 KiB, a gzip
bomb past the whole-archive ratio, overlapping zip entries, an image that takes the validator past its
memory limit; and a validation whose pool child is killed at every attempt (as the kernel's OOM killer
would kill it) ends ``failed`` (``validation_crashed``) after ``FT_VALIDATION_MAX_ATTEMPTS``, not in a
requeue loop. Meanwhile the worker's process tree stays under a stated memory bound and ``/healthz``
answers in well under 100 ms (median).

One worker serves every case (a worker takes seconds to start on a loaded machine), so this module runs its
own stack rather than the shared ``stack`` fixture, whose workers are stopped after each test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Dataset
from app.db.session import create_db_engine, session_factory, transaction
from tests.app.helpers import image_tree, zip_bytes
from tests.hostile_archives import MIB, gzip_of_zeros, header_member, overlapping_zip, tar_gz_of_zeros
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow

RATIO = 20  # FT_EXTRACT_MAX_RATIO: small, so that a bomb of a few MiB of zeros is past it
VALIDATOR_MB = 64  # FT_VALIDATION_MEMORY_MB: what the validator may map beyond its start-up
VALIDATOR_START_MB = 80  # the validator's resident memory once started (Python, Pillow, numpy: about 56 MiB)
MAX_ATTEMPTS = 3  # FT_VALIDATION_MAX_ATTEMPTS
WORKER_ENV = {
    "FT_EXTRACT_MAX_RATIO": str(RATIO),
    "FT_VALIDATION_MEMORY_MB": str(VALIDATOR_MB),
    "FT_VALIDATION_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
}
# The bound on the worker's tree: its memory (PSS summed over its processes) grows by at most a validator (its
# start-up and its limit) and a margin for the pool child. Before the limits, the pax header alone grew the
# server's processes by 743 MiB.
VALIDATOR_BOUND_MB = VALIDATOR_START_MB + VALIDATOR_MB
TREE_GROWTH_BOUND_MB = VALIDATOR_BOUND_MB + 32
API_GROWTH_BOUND_MB = 32  # the API's processes: an upload streams to the store, whatever it holds
HEALTHZ_MEDIAN_BOUND_S = 0.1


# --- the worker's process tree, read from /proc -------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # it ended meanwhile
    return found


def status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """The process's proportional share of resident memory: a page shared by n processes counts 1/n in each,
    so the sum over a tree is the tree's memory (a forked child, before it execs, adds nothing)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def is_validator(pid: int) -> bool:
    try:
        return b"training.isolated" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class TreeMemory:
    """Samples a process tree's memory (its processes' PSS summed) every 10 ms while a case runs, and the peak
    resident memory of each validator in it."""

    root: int
    peak_kib: int = 0
    validators: dict[int, int] = field(default_factory=dict)  # validator pid: its peak resident memory (KiB)
    stopped: threading.Event = field(default_factory=threading.Event)

    def resident_kib(self) -> int:
        return sum(map(pss_kib, descendants(self.root)))

    def run(self) -> None:
        while not self.stopped.is_set():
            pids = descendants(self.root)
            self.peak_kib = max(self.peak_kib, sum(map(pss_kib, pids)))
            for pid in filter(is_validator, pids):
                self.validators[pid] = max(self.validators.get(pid, 0), status_kib(pid, "VmHWM"))
            time.sleep(0.01)


@dataclass
class Healthz:
    """Times ``/healthz`` every 50 ms, on one kept-alive connection, while a case runs."""

    url: str
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            client.get("/healthz")
            while not self.stopped.is_set():
                began = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.TransportError as error:
                    self.failures.append(repr(error))
                    continue
                self.seconds.append(time.perf_counter() - began)
                if status != 200:
                    self.failures.append(f"status {status}")
                time.sleep(0.05)


@dataclass
class Measured:
    dataset: dict
    attempts: int
    answer_s: float
    growth_mb: float  # the worker's tree
    api_growth_mb: float
    validators_mb: list[float]
    healthz: list[float]
    healthz_failures: list[str]


# --- the stack: API, database, broker, and one validation worker -------------------------------------------


@dataclass
class Hostile:
    stack: Stack
    worker: subprocess.Popen[bytes]
    factory: sessionmaker[Session]

    def attempts(self, dataset_id: str) -> int:
        with transaction(self.factory) as session:
            return int(session.get(Dataset, dataset_id).validation_attempts)

    def upload(self, archive: Path, during: Callable[[str], None] | None = None) -> Measured:
        """Upload ``archive``, wait for its data set to leave ``validating``, measuring the worker's tree and
        /healthz meanwhile; ``during(dataset_id)`` runs beside the validation (a fault to inject)."""
        settle_pool(self.worker.pid)
        memory, api_memory = TreeMemory(self.worker.pid), TreeMemory(self.stack.api.pid)
        baseline_kib, api_baseline_kib = memory.resident_kib(), api_memory.resident_kib()
        health = Healthz(self.stack.url)
        samplers = [threading.Thread(target=sampler.run) for sampler in (memory, api_memory, health)]
        for thread in samplers:
            thread.start()
        try:
            began = time.perf_counter()
            with self.stack.client() as client, archive.open("rb") as file:
                created = client.post("/v1/datasets", files={"file": (archive.name, file)})
                assert created.status_code == 201, created.text
                dataset_id = created.json()["id"]
                injector = threading.Thread(target=during, args=(dataset_id,)) if during else None
                if injector:
                    injector.start()
                deadline = time.monotonic() + 180
                while (shown := client.get(f"/v1/datasets/{dataset_id}").json())["status"] == "validating":
                    assert time.monotonic() < deadline, f"{archive.name}: still validating after 180 s"
                    time.sleep(0.05)
                answer_s = time.perf_counter() - began
                if injector:
                    injector.join(30)
        finally:
            for stopped in (memory.stopped, api_memory.stopped, health.stopped):
                stopped.set()
            for thread in samplers:
                thread.join(30)
        return Measured(
            dataset=shown,
            attempts=self.attempts(dataset_id),
            answer_s=answer_s,
            growth_mb=(memory.peak_kib - baseline_kib) / 1024,
            api_growth_mb=(api_memory.peak_kib - api_baseline_kib) / 1024,
            validators_mb=[kib / 1024 for kib in memory.validators.values()],
            healthz=health.seconds,
            healthz_failures=health.failures,
        )


def settle_pool(worker_pid: int, timeout: float = 60) -> None:
    """Until the worker has its pool child (a killed one is replaced) and no validator runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = descendants(worker_pid)
        if len(pids) >= 2 and not any(map(is_validator, pids)):
            return
        time.sleep(0.1)
    raise AssertionError(f"the worker's pool did not settle: {descendants(worker_pid)}")


@pytest.fixture(scope="module")
def hostile(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    home = tmp_path_factory.mktemp("hostile-stack")
    with running_stack(postgres_url, redis_url, home, **WORKER_ENV) as stack:
        worker = stack.start_worker(queues="cpu")
        engine = create_db_engine(stack.env["FT_DATABASE_URL"])
        try:
            settle_pool(worker.pid, timeout=120)
            found = Hostile(stack, worker, session_factory(engine))
            warm_up = home / "fine.zip"  # the pool child's first task imports what validation needs: not measured
            warm_up.write_bytes(zip_bytes(image_tree()))
            assert found.upload(warm_up).dataset["status"] == "ready"  # the limits here let a good set through
            yield found
        finally:
            engine.dispose()
            if worker.poll() is None:
                stack.stop_worker(worker)


def report(case: str, measured: Measured) -> None:
    times = measured.healthz
    validators = ", ".join(f"{mb:.0f}" for mb in measured.validators_mb) or "none"
    print(
        f"\n{case}: {measured.dataset['status']} after {measured.answer_s:.2f} s ({measured.attempts} attempt(s)); "
        f"worker tree peak +{measured.growth_mb:.0f} MiB (validators' resident peaks {validators} MiB), "
        f"API's processes +{measured.api_growth_mb:.0f} MiB; "
        f"/healthz median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.0f} ms "
        f"over {len(times)}; load {os.getloadavg()[0]:.1f}"
    )


def assert_bounded(measured: Measured) -> None:
    assert measured.growth_mb < TREE_GROWTH_BOUND_MB, f"the worker's tree grew {measured.growth_mb:.0f} MiB"
    assert measured.api_growth_mb < API_GROWTH_BOUND_MB, f"the API's processes grew {measured.api_growth_mb:.0f} MiB"
    assert all(mb <= VALIDATOR_BOUND_MB for mb in measured.validators_mb), measured.validators_mb
    assert not measured.healthz_failures, measured.healthz_failures
    assert len(measured.healthz) >= 3, "too few /healthz samples"
    median = statistics.median(measured.healthz)
    assert median < HEALTHZ_MEDIAN_BOUND_S, f"/healthz took {median * 1000:.0f} ms (median) meanwhile"


# --- the archives ------------------------------------------------------------------------------------------


def pax_header_archive(folder: Path) -> Path:
    """A .tar.gz whose pax header announces 256 MiB (the issue's 254 KiB archive, cut after 1 MiB of it:
    the header is refused before its payload is read either way)."""
    return gzip_of_zeros(folder / "pax.tar.gz", header_member(tarfile.XHDTYPE, 256 * MIB), MIB)


def ratio_bomb(folder: Path) -> Path:
    """64 MiB of zeros in a .tar.gz of about 64 KiB: past RATIO after 1.3 MiB."""
    return tar_gz_of_zeros(folder / "zeros.tar.gz", 64 * MIB)


def overlapping_entries(folder: Path) -> Path:
    """One 4 MiB stream of zeros named by 50 entries: 200 MiB from a 4 KiB zip."""
    return overlapping_zip(folder / "overlap.zip", copies=50)


def image_past_the_validators_memory(folder: Path) -> Path:
    """A one-colour RGBA PNG of 6000 x 6000 (36 Mpx, under FT_IMAGE_MAX_PIXELS): a few KB that decode to 144 MB,
    past the validator's 64 MiB however many decode threads' stacks (2 MiB each, at most 8) it counts too."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (6000, 6000), (10, 200, 30, 255)).save(out, format="PNG")
    path = folder / "huge.zip"
    path.write_bytes(zip_bytes({**image_tree(), "train/cat/huge.png": out.getvalue()}))
    return path


CASES = {
    "pax_header": (
        pax_header_archive,
        "dataset_invalid",
        f"a pax extended header of {256 * MIB} bytes (the limit is 64 KiB); refused",
    ),
    "ratio_bomb": (ratio_bomb, "dataset_invalid", f"expands more than {RATIO} times its size of"),
    "overlapping_zip": (overlapping_entries, "dataset_invalid", "overlap in the archive; refused as a possible zip"),
    "validator_memory": (
        image_past_the_validators_memory,
        "validation_crashed",
        f"ran out of its memory limit of {VALIDATOR_MB} MiB (FT_VALIDATION_MEMORY_MB)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_archive_ends_failed_naming_its_limit_with_the_worker_bounded(hostile, case, tmp_path):
    build, code, named = CASES[case]
    archive = build(tmp_path)

    measured = hostile.upload(archive)

    report(case, measured)
    shown = measured.dataset
    assert shown["status"] == "failed", shown
    assert shown["error"]["code"] == code, shown["error"]
    assert named in shown["error"]["message"], shown["error"]["message"]
    assert measured.attempts == 1  # refused at the first attempt: nothing to requeue
    assert_bounded(measured)
    extracted = Path(hostile.stack.home) / "data" / "datasets" / shown["id"]
    assert not extracted.exists(), f"left behind: {sorted(p.name for p in extracted.rglob('*'))}"
    if case == "ratio_bomb":
        written = int(shown["error"]["message"].split("over ")[1].split(" bytes")[0])
        assert written <= max(RATIO * archive.stat().st_size, MIB) + MIB  # stopped within a copy chunk


def test_a_validation_whose_worker_keeps_dying_ends_failed_after_its_attempts(hostile, tmp_path):
    archive = tmp_path / "fine.zip"
    archive.write_bytes(zip_bytes(image_tree(per_class=100)))  # a good set: only the kills make it fail
    killed: list[int] = []
    validators: list[int] = []

    def kill_the_pool_child_at_each_attempt(dataset_id: str) -> None:
        """As the OOM killer would: SIGKILL the pool child while its validator runs, MAX_ATTEMPTS times."""
        deadline = time.monotonic() + 150
        while len(killed) < MAX_ATTEMPTS and time.monotonic() < deadline:
            for pid in descendants(hostile.worker.pid):
                if pid not in validators and is_validator(pid):
                    validators.append(pid)
                    with contextlib.suppress(OSError):  # it ended meanwhile: nothing to kill
                        pool_child = parent_of(pid)
                        os.kill(pool_child, signal.SIGKILL)
                        killed.append(pool_child)
            time.sleep(0.005)

    measured = hostile.upload(archive, during=kill_the_pool_child_at_each_attempt)

    report("pool child killed at each attempt", measured)
    shown = measured.dataset
    assert len(killed) == MAX_ATTEMPTS, f"killed {killed}"
    assert shown["status"] == "failed", shown
    assert shown["error"]["code"] == "validation_crashed"
    message = shown["error"]["message"]
    assert f"validation died {MAX_ATTEMPTS} times" in message
    assert f"FT_VALIDATION_MAX_ATTEMPTS={MAX_ATTEMPTS}" in message
    assert measured.attempts == MAX_ATTEMPTS + 1  # the last one only recorded the end
    time.sleep(2)  # nothing is delivered again: no loop
    assert hostile.attempts(shown["id"]) == MAX_ATTEMPTS + 1
    assert not any(map(is_alive, validators)), "a validator outlived its pool child"
    assert hostile.worker.poll() is None  # the worker itself lived on, with a new pool child
    assert_bounded(measured)
