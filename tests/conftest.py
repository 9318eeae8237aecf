"""Services the tests use: PostgreSQL and Redis on this machine (CI has the same).

A service that cannot be reached skips the tests that need it, unless ``FT_REQUIRE_SERVICES=1`` (CI sets
it): then it fails them, so a missing service can never pass for a green run.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get("FT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_missing(name: str, url: str, error: Exception) -> None:
    """Fail (FT_REQUIRE_SERVICES=1) or skip the calling test: ``name`` at ``url`` is unreachable."""
    message = f"{name} at {url} is unreachable ({type(error).__name__}: {error})"
    if os.environ.get("FT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message}; FT_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a reachable PostgreSQL server's maintenance database."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        psycopg.connect(url.set(drivername="postgresql").render_as_string(False), connect_timeout=3).close()
    except Exception as error:
        service_missing("PostgreSQL", POSTGRES_URL, error)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as error:
        service_missing("Redis", REDIS_URL, error)
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real S3 gateway (SeaweedFS, tests/s3.py) on free ports for the session, with a fresh bucket."""
    from tests.s3 import running_gateway

    try:
        gateway = running_gateway(tmp_path_factory.mktemp("seaweedfs"))
        found = gateway.__enter__()
    except (OSError, RuntimeError) as error:
        service_missing("SeaweedFS (weed server -s3)", "a free port", error)
    yield found
    gateway.__exit__(None, None, None)
