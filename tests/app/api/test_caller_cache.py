"""The brief memory of who an API key acts for (``app.api.callers``): how long a revoked key keeps working
(the bound is ``auth_cache_seconds`` per process), and what is never remembered."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.api.callers import CallerCache
from app.clock import utcnow
from app.db.models import Project
from app.db.session import transaction
from app.services.projects import create_api_key, revoke_api_key

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app, settings):
    """Auth on, and the app's cache on a clock the test moves."""
    settings.auth_enabled = True
    ticking = Clock()
    app.state.callers = CallerCache(settings.auth_cache_seconds, clock=ticking)
    return ticking


def make_key(app, project: str = "alpha", expires_in: timedelta | None = None) -> tuple[str, dict[str, str]]:
    with transaction(app.state.session_factory) as session:
        row, secret = create_api_key(session, project, expires_in=expires_in)
    return row.id, {"Authorization": f"Bearer {secret}"}


def revoke(app, key_id: str) -> None:
    with transaction(app.state.session_factory) as session:
        revoke_api_key(session, key_id)


async def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(client, app, settings, clock):
    assert settings.auth_cache_seconds == 5.0  # the documented default
    key_id, headers = make_key(app)
    for path in ("/v1/jobs", "/v1/datasets"):  # a hot route (one call) and a route on the request's session
        assert (await client.get(path, headers=headers)).status_code == 200
    revoke(app, key_id)
    clock.now += 4.9
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 200  # within the bound: remembered
    clock.now += 0.1
    for path in ("/v1/jobs", "/v1/datasets", "/v1/jobs/ftjob_x"):
        refused = await client.get(path, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path


async def test_with_the_cache_off_a_revocation_takes_effect_at_once(client, app, settings):
    settings.auth_enabled = True
    app.state.callers = CallerCache(0)
    key_id, headers = make_key(app)
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 200
    revoke(app, key_id)
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 401


async def test_an_expired_key_stops_at_its_expiry_even_when_remembered(client, app, clock, monkeypatch):
    _, headers = make_key(app, expires_in=timedelta(days=1))
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 200
    later = utcnow() + timedelta(days=1, seconds=1)
    monkeypatch.setattr("app.api.callers.utcnow", lambda: later)  # still fresh in the cache, past the key's expiry
    assert app.state.callers.caller(headers["Authorization"].removeprefix("Bearer "), True) is None


async def test_a_new_key_works_at_once_and_failures_are_not_remembered(client, app, clock):
    assert (await client.get("/v1/jobs", headers={"Authorization": "Bearer ftk_unknown"})).status_code == 401
    assert app.state.callers._entries == {}
    _, headers = make_key(app)
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 200


async def test_a_request_that_rolls_back_leaves_no_default_project_remembered(client, app):
    """Auth off: the first request creates the default project; if its transaction rolls back (a 422), the
    next request must not act for the project that was never committed."""
    refused = await client.post("/v1/jobs", json={"spec": {"data": {"path": "/etc"}}})
    assert refused.status_code == 422
    assert (await client.get("/v1/jobs")).status_code == 200
    with transaction(app.state.session_factory) as session:
        ids = list(session.scalars(select(Project.id)))
    remembered = [entry.caller.project_id for entry in app.state.callers._entries.values()]
    assert remembered and set(remembered) <= set(ids)
