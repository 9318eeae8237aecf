"""Logs: JSON lines in production, readable lines in the embedded mode, each naming the request or the job
it belongs to; the API's uvicorn logs included."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from app.api.middleware import RequestIdMiddleware
from app.context import Runtime
from app.observability.logs import configure_logging, job_context, start_in_context
from tests.app.servers import REPO, free_port
from worker.runner import JobRunner

log = logging.getLogger("tests.observability")


@pytest.fixture
def captured():
    """Configure logging into a buffer, as ``finetune serve`` and ``finetune worker`` do; undo it afterwards."""
    root, level = logging.getLogger(), logging.getLogger().level
    buffer = io.StringIO()
    handlers = []

    def configure(log_format: str) -> io.StringIO:
        handlers.append(configure_logging(log_format, "INFO", stream=buffer))
        return buffer

    yield configure
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines(buffer: io.StringIO, logger: str = log.name) -> list[dict]:
    """The records of ``logger`` (httpx, for one, logs too)."""
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [record for record in records if record["logger"] == logger]


def test_a_json_line_carries_the_ids_the_extra_fields_and_the_traceback(captured):
    buffer = captured("json")
    with job_context("ftjob_01"):
        log.info("epoch %d done", 3, extra={"epoch": 3})
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("it failed")
    log.warning("outside")
    first, second, third = json_lines(buffer)
    assert first["message"] == "epoch 3 done" and first["level"] == "INFO" and first["logger"] == log.name
    assert first["job_id"] == "ftjob_01" and first["epoch"] == 3 and first["time"].endswith("Z")
    assert "request_id" not in first
    assert second["exception"].startswith("Traceback") and "ValueError: bad" in second["exception"]
    assert "job_id" not in third


def test_a_text_line_is_readable_and_names_the_job(captured):
    buffer = captured("text")
    with job_context("ftjob_01"):
        log.info("claimed")
    log.info("idle")
    claimed, idle = buffer.getvalue().splitlines()
    assert claimed.endswith(" INFO tests.observability [ftjob_01]: claimed")
    assert idle.endswith(" INFO tests.observability: idle")


def test_threads_started_in_context_name_the_job_too(captured):
    buffer = captured("json")
    with job_context("ftjob_02"):
        thread = threading.Thread(target=lambda: log.info("from the lease thread"))
        start_in_context(thread)
        thread.join()
    assert json_lines(buffer)[0]["job_id"] == "ftjob_02"


@pytest.mark.anyio
async def test_every_record_of_a_request_carries_its_request_id(captured):
    buffer = captured("json")
    app = FastAPI()

    @app.get("/in-a-thread")
    def in_a_thread() -> dict:  # FastAPI runs it in its thread pool
        log.info("sync route")
        return {}

    @app.get("/async")
    async def in_the_loop() -> dict:
        log.info("async route")
        return {}

    app.add_middleware(RequestIdMiddleware)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        given = await client.get("/in-a-thread", headers={"X-Request-ID": "client-chosen-1"})
        made = await client.get("/async")
    sync_line, async_line = json_lines(buffer)
    assert sync_line["request_id"] == given.headers["x-request-id"] == "client-chosen-1"
    assert async_line["request_id"] == made.headers["x-request-id"] and made.headers["x-request-id"].startswith("req_")


def test_a_worker_logs_with_the_job_id(captured, settings):
    buffer = captured("json")
    services = Runtime.from_settings(settings)
    try:
        assert JobRunner(services, "ftjob_01JNOTHERE", threading.Event()).run() == "not claimed"
    finally:
        services.close()
    [line] = json_lines(buffer, "worker.runner")
    assert line["job_id"] == "ftjob_01JNOTHERE" and "not claimable" in line["message"]


def test_finetune_serve_logs_json_lines_uvicorns_access_log_included(tmp_path):
    port = free_port()
    env = {**os.environ, "FT_HOME": str(tmp_path / "home"), "FT_LOG_FORMAT": "json"}
    env.pop("FT_DATABASE_URL", None)
    # --verbose: the embedded mode logs to FT_HOME/logs/serve.log unless told to log to the terminal
    command = [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(port), "--verbose"]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "finetune serve did not start"
                time.sleep(0.2)
        # Once up, one probe (a retried probe, timed out while served, was logged twice on a busy host).
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": "probe-7"}, timeout=30)
        assert response.status_code == 200
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records and len(records) == len([line for line in stderr.splitlines() if line.startswith("{")])
    [access] = [r for r in records if r["logger"] == "uvicorn.access" and r.get("request_id") == "probe-7"]
    assert access["method"] == "GET" and access["path"] == "/healthz" and access["status"] == 200
    assert any(r["logger"] == "uvicorn.error" and "Uvicorn running" in r["message"] for r in records)
