"""The client against the real API: a uvicorn server in a subprocess on each backend (SQLite with the file
broker and database polling; PostgreSQL with Redis as the broker and the live event stream), auth on.

The test process writes what a worker would (events, epochs, artifacts) into the same database with the
service functions, through a session factory that mirrors events to the server's Redis stream, and gets
an API key per test (the database is emptied between tests by the ``settings`` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.client import Client
from app.db.session import session_factory, transaction
from app.events import EventStream, install_stream_hooks
from app.services.projects import create_api_key
from app.settings import Settings
from tests.app.client.proxy import CuttableProxy
from tests.app.client.server import FAST_RETRY, MAX_UPLOAD_BYTES, PROJECT, REPO, ApiServer, free_port, wait_until_up


@pytest.fixture(scope="session")
def api_server(backend, tmp_path_factory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("client-api-home")
    port = free_port()
    prefix = f"fttest-client-{port}:"
    settings = Settings(
        home=home,
        database_url=backend.database_url,
        broker_url=backend.redis_url,
        redis_url=backend.redis_url,
        broker_key_prefix=prefix if backend.redis_url else "",
        auth_enabled=True,
        max_upload_bytes=MAX_UPLOAD_BYTES,
    )
    env = {
        **os.environ,
        "FT_HOME": str(home),
        "FT_DATABASE_URL": backend.database_url,
        "FT_AUTH_ENABLED": "true",
        "FT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        # The server outlives its tests (one a session) and shares the backend's database with every later test:
        # its periodic sweep would act on their rows (it once sent the retry that the webhooks test's own sweep
        # was to send). No test here needs it.
        "FT_SWEEP_INTERVAL_SECONDS": "86400",
    }
    if backend.redis_url:
        env |= {"FT_BROKER_URL": backend.redis_url, "FT_REDIS_URL": backend.redis_url, "FT_BROKER_KEY_PREFIX": prefix}
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(process, url)
    yield ApiServer(url=url, port=port, settings=settings)
    process.terminate()
    process.wait(10)
    if backend.redis_url:
        import redis

        client = redis.Redis.from_url(backend.redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture(scope="session")
def worker_factory(api_server: ApiServer, backend_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the server's database whose events also reach its Redis stream, as a worker's do."""
    factory = session_factory(backend_engine)
    settings = api_server.settings
    stream = EventStream(settings.redis_url, settings.broker_key_prefix) if settings.redis_url else None
    install_stream_hooks(factory, stream)
    return factory


@pytest.fixture
def api_key(settings: Settings, worker_factory: sessionmaker[Session]) -> str:
    """A key of the project ``vision`` (``settings`` has just emptied the database)."""
    with transaction(worker_factory) as session:
        _, secret = create_api_key(session, PROJECT)
    return secret


@pytest.fixture
def api(api_server: ApiServer, api_key: str) -> Iterator[Client]:
    with Client(api_server.url, api_key, retry=FAST_RETRY) as client:
        yield client


@pytest.fixture
def proxy(api_server: ApiServer) -> Iterator[CuttableProxy]:
    cutter = CuttableProxy(api_server.port)
    yield cutter
    cutter.close()
