"""The production install, made the way the Dockerfile makes it: pyproject's dependencies pinned by the lock,
no dev extras, in a fresh virtual environment that sees nothing of this one. The tests run in the dev
environment, where pytest and the linters pull in packages the service itself may forget to declare (kombu's
Redis transport needs ``packaging``, which kombu declares only under its ``redis`` extra: every worker of the
image crashed at start-up while every test passed). Here each module the entry points load must import, the
Celery app must load its Redis transport, and ``finetune worker/serve --help`` must run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from tests.test_deploy import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "app", "worker", "cli")


def runtime_copies() -> list[str]:
    """The files and folders the Dockerfile's runtime stage (where the project is installed) copies from the
    build context."""
    copies, in_runtime = [], False
    for instruction, arguments in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if instruction == "FROM":
            in_runtime = arguments.split()[-1] == "runtime"
        elif instruction == "COPY" and in_runtime and not arguments.startswith("--from"):
            copies += arguments.split()[:-1]
    return copies


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def dependency_layer(src: Path) -> Path:
    """A venv holding the runtime stage's first install (the dependencies), cached between sessions the way
    Docker caches that layer: keyed on what it is built from, so a changed dependency list or lock builds a
    new one. Never changed once built: each session links a copy of it and installs the project there."""
    dependencies = tomllib.loads((src / "pyproject.toml").read_text())["project"]["dependencies"]
    (src / "requirements.txt").write_text("\n".join(dependencies) + "\n")
    key = hashlib.sha256(
        "\0".join([sys.version, *dependencies, (src / "constraints.txt").read_text()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetune-tests"
    layer = cache / f"production-dependencies-{key}"
    if layer.is_dir():
        return layer
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    try:
        run([sys.executable, "-m", "venv", building])
        run(
            [
                building / "bin" / "python",
                "-m",
                "pip",
                "install",
                "--quiet",
                "-c",
                "constraints.txt",
                "-r",
                "requirements.txt",
            ],
            cwd=src,
        )
        building.rename(layer)  # atomic: a concurrent session that got there first keeps its own
    except OSError:
        if not layer.is_dir():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    for stale in cache.glob("production-dependencies-*"):
        if stale != layer:
            shutil.rmtree(stale, ignore_errors=True)
    return layer


@pytest.fixture(scope="session")
def production_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding what the image's runtime stage installs, from a copy of what that stage copies."""
    base = tmp_path_factory.mktemp("production")
    src = base / "src"
    src.mkdir()
    for name in runtime_copies():
        source = ROOT / name.rstrip("/")
        if source.is_dir():
            shutil.copytree(source, src / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / source.name)
    venv = base / "venv"
    # Hard links: seconds for the gigabytes of torch; installing the project only adds files.
    shutil.copytree(dependency_layer(src), venv, symlinks=True, copy_function=link_or_copy)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "."], cwd=src)
    run([python, "-m", "pip", "check"], cwd=src)
    return venv


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def production_env() -> dict[str, str]:
    """This environment less anything that would let the venv see the dev environment's packages."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    return {**env, "PYTHONNOUSERSITE": "1"}


IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import {packages}
for package in ({packages},):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
import kombu.transport.redis
from app.settings import Settings
from worker.celery_app import create_celery
celery = create_celery(Settings(broker_url="redis://127.0.0.1:1/0", database_url="sqlite://"))
with celery.connection_for_write() as connection:
    transport = connection.transport  # loads the Redis transport class; connects to nothing
print(type(transport).__module__, sys.prefix)
"""


def test_every_module_imports_and_the_worker_loads_the_redis_transport(production_venv: Path, tmp_path: Path):
    script = IMPORT_EVERYTHING.format(packages=", ".join(PACKAGES))
    # Run from an empty folder: the project's own source tree must not shadow the installed packages.
    result = run([production_venv / "bin" / "python", "-c", script], cwd=tmp_path, env=production_env())
    module, prefix = result.stdout.split()
    assert module == "kombu.transport.redis"
    assert Path(prefix) == production_venv


def test_the_installed_packages_are_the_project_and_its_dependencies_only(production_venv: Path, tmp_path: Path):
    """No dev extras: a test tool that turned up here would hide a missing dependency, as pytest hid packaging."""
    result = run([production_venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"], cwd=tmp_path)
    installed = {line.split("==")[0].lower() for line in result.stdout.split()}
    assert "finetune-service" in installed
    assert not installed & {"pytest", "ruff", "mypy", "schemathesis", "check-jsonschema"}


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_the_images_commands_start(production_venv: Path, tmp_path: Path, command: str):
    result = run([production_venv / "bin" / "finetune", command, "--help"], cwd=tmp_path, env=production_env())
    assert result.stdout.startswith(f"Usage: finetune {command}")
