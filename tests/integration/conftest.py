"""Fixtures for the integration tests: the stack (tests/integration/stack.py), a CIFAR-10 subset uploaded."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cifar import make_cifar_subset
from tests.integration.stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(postgres_url, redis_url, tmp_path_factory.mktemp("stack")) as built:
        yield built


@pytest.fixture(scope="session")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the ImageFolder tree, its zip) of a seeded CIFAR-10 subset: 20 train and 10 test images per class. Made
    once for the session (seconds each time on a loaded machine): the tests only read it and upload the zip."""
    root = make_cifar_subset(tmp_path_factory.mktemp("cifar") / "cifar10", per_class=20, test_per_class=10)
    archive = Path(shutil.make_archive(str(root), "zip", root))
    return root, archive


@pytest.fixture(scope="module")
def dataset_id(stack: Stack, cifar: tuple[Path, Path]) -> str:
    """The subset uploaded and validated (by a cpu-queue worker) to ready."""
    worker = stack.start_worker(queues="cpu")
    try:
        with stack.client() as client, cifar[1].open("rb") as archive:
            created = client.post("/v1/datasets", files={"file": ("cifar10.zip", archive)})
            assert created.status_code == 201, created.text
            ds = created.json()["id"]
            deadline = time.monotonic() + 120
            while (shown := client.get(f"/v1/datasets/{ds}").json())["status"] == "validating":
                assert time.monotonic() < deadline, "validation did not finish"
                time.sleep(0.3)
        assert shown["status"] == "ready", shown
        assert shown["counts"]["train"] == dict.fromkeys(shown["class_names"], 20)
        return str(ds)
    finally:
        stack.stop_worker(worker)


@pytest.fixture(autouse=True)
def no_worker_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts the workers it needs; whatever it left running is stopped (SIGTERM) after it."""
    yield
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        for worker in stack.workers:
            if worker.poll() is None:
                stack.stop_worker(worker)
