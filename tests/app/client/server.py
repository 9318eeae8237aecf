"""The API server the client tests talk to: uvicorn in a subprocess, and what the tests need to know of it."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.client import Retry
from app.settings import Settings

REPO = Path(__file__).resolve().parents[3]
MB = 1 << 20
MAX_UPLOAD_BYTES = 16 * MB
PROJECT = "vision"
FAST_RETRY = Retry(attempts=2, reconnects=4, backoff=0.05, max_backoff=0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ApiServer:
    url: str
    port: int
    settings: Settings  # the server's own: its home (artifact store), database, broker and stream


def wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
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
