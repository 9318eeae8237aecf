"""A real ``finetune worker`` records its heartbeat from its task loop while it runs and removes it when it
stops; the worker image's health check reads it; the worker logs JSON lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from app.observability.heartbeats import check_host, heartbeats_for
from tests.app.servers import REPO


def worker_env(settings) -> dict[str, str]:
    env = {**os.environ, "FT_HOME": str(settings.home), "FT_DATABASE_URL": str(settings.database_url)}
    env |= {"FT_LOG_FORMAT": "json", "FT_WORKER_HEARTBEAT_SECONDS": "0.5"}
    if settings.redis_url:
        env |= {"FT_BROKER_URL": settings.celery_broker_url, "FT_REDIS_URL": settings.redis_url}
        env |= {"FT_BROKER_KEY_PREFIX": settings.broker_key_prefix}
    return env


def health_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.observability.heartbeats"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


# Production's path only (Redis, the beat on the consumer's event loop): a worker takes seconds to start and to
# stop, and the file store of the embedded mode is covered by the metrics' tests.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_worker_beats_while_it_runs_and_is_forgotten_when_it_stops(settings):
    env = worker_env(settings)
    name = f"cpu@{socket.gethostname()}"
    store = heartbeats_for(settings.model_copy(update={"worker_heartbeat_seconds": 0.5}))
    command = [sys.executable, "-m", "cli", "worker", "--queues", "cpu"]
    worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while name not in store.last_beats():
            assert worker.poll() is None and time.monotonic() < deadline, "the worker recorded no heartbeat"
            time.sleep(0.2)
        first = store.last_beats()[name]
        while store.last_beats()[name] == first:  # it keeps beating
            assert time.monotonic() < deadline, "the worker beat once only"
            time.sleep(0.2)
        checked = health_check(env)
        assert checked.returncode == 0, checked.stderr
        assert check_host(settings, "another-host")[0] is False  # only this host's workers count
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    assert name not in store.last_beats()
    assert health_check(env).returncode == 1
    store.close()
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is a JSON record
    assert any(r["logger"] == "celery.apps.worker" and r["message"] == f"{name} ready." for r in records)
