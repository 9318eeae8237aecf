"""API keys and tenancy: every query is scoped to the caller's project; another project's object is a 404."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import ApiKey
from app.db.session import transaction
from app.services.projects import hash_key
from tests.app.helpers import job_body, ready_dataset

pytestmark = pytest.mark.anyio


async def test_requests_without_a_valid_key_are_401(client, keys):
    for headers in ({}, {"Authorization": "Bearer ftk_wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = await client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] in {"unauthorized", "invalid_api_key"}
    assert (await client.get("/v1/jobs", headers=keys["alpha"])).status_code == 200


async def test_keys_are_stored_only_as_hashes(app, keys):
    secret = keys["alpha"]["Authorization"].removeprefix("Bearer ")
    assert secret.startswith("ftk_") and len(secret) > 40
    with transaction(app.state.session_factory) as session:
        stored = list(session.scalars(select(ApiKey)))
    assert hash_key(secret) in {row.key_hash for row in stored}
    assert all(secret not in (row.key_hash, row.key_prefix) for row in stored)


async def test_a_project_sees_nothing_of_another(client, app, settings, keys):
    client.headers.update(keys["alpha"])
    dataset = await ready_dataset(client, app, settings)
    job = (await client.post("/v1/jobs", json=job_body(dataset["id"]))).json()
    client.headers.update(keys["beta"])
    assert (await client.get("/v1/datasets")).json()["data"] == []
    assert (await client.get("/v1/jobs")).json()["data"] == []
    assert (await client.get("/v1/jobs", params={"dataset": dataset["id"]})).json()["data"] == []
    for method, path in [
        ("GET", f"/v1/datasets/{dataset['id']}"),
        ("DELETE", f"/v1/datasets/{dataset['id']}"),
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/metrics"),
        ("GET", f"/v1/jobs/{job['id']}/checkpoints"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    # Naming another project's data set in a spec finds nothing either.
    assert (await client.post("/v1/jobs", json=job_body(dataset["id"]))).status_code == 404
    assert (await client.post("/v1/jobs/validate", json=job_body(dataset["id"]))).status_code == 404
    client.headers.update(keys["alpha"])
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"


async def test_idempotency_keys_are_scoped_to_the_project(client, app, settings, keys):
    client.headers.update(keys["alpha"])
    alpha_set = await ready_dataset(client, app, settings)
    client.headers.update(keys["beta"])
    beta_set = await ready_dataset(client, app, settings)
    same_key = {"Idempotency-Key": "shared"}
    client.headers.update(keys["alpha"])
    a = await client.post("/v1/jobs", json=job_body(alpha_set["id"]), headers=same_key)
    client.headers.update(keys["beta"])
    b = await client.post("/v1/jobs", json=job_body(beta_set["id"]), headers=same_key)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


async def test_auth_off_acts_as_the_default_project(client, settings):
    assert settings.auth_required is False
    response = await client.get("/v1/jobs")
    assert response.status_code == 200
