"""A real uvicorn server of the app in a subprocess, on a test backend (SQLite, or PostgreSQL + Redis)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, home: Path, env: dict[str, str]) -> None:
        self.process, self.url, self.home, self.env = process, url, home, env

    def reset_peak_memory(self) -> int:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        return memory_kb(self.process.pid, "VmHWM")

    def peak_memory(self) -> int:
        return memory_kb(self.process.pid, "VmHWM")


def wait_until_up(process: subprocess.Popen[bytes], url: str, timeout: float = 30) -> None:
    """Until the server at ``url`` answers /healthz; the test fails if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("uvicorn did not start")
        time.sleep(0.1)


def backend_env(backend, home: Path, prefix: str) -> dict[str, str]:
    """The FT_ variables that point a process at ``backend``, with its own home and Redis key prefix."""
    env = {**os.environ, "FT_HOME": str(home), "FT_DATABASE_URL": backend.database_url, "FT_AUTH_ENABLED": "false"}
    # The tests empty the database between tests while a module's server runs on: a caller it remembered (the
    # default project's id, app/api/callers.py) would outlive its project. Production never deletes a project.
    env["FT_AUTH_CACHE_SECONDS"] = "0"
    if backend.redis_url:
        env |= {"FT_BROKER_URL": backend.redis_url, "FT_REDIS_URL": backend.redis_url, "FT_BROKER_KEY_PREFIX": prefix}
    return env


@contextmanager
def uvicorn_server(backend, home: Path, **extra_env: str) -> Iterator[Server]:
    port = free_port()
    env = {**backend_env(backend, home, f"fttest-uvicorn-{port}:"), **extra_env}
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, url)
    try:
        yield Server(process, url, home, env)
    finally:
        process.terminate()
        process.wait(10)
        if backend.redis_url:
            import redis

            client = redis.Redis.from_url(backend.redis_url)
            for key in client.scan_iter(f"{env['FT_BROKER_KEY_PREFIX']}*"):
                client.delete(key)
            client.close()
