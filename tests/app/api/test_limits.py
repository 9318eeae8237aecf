"""Limits a client meets before anything else runs: the body cap (before parsing and before the API key),
the operator's ceilings on a spec, the dry run's bounded time, /metrics behind its token, the Host
allowlist, and /readyz without exception text."""

from __future__ import annotations

import time

import httpx
import pytest

from app.db.session import transaction
from app.main import create_app
from app.services.projects import create_api_key
from tests.app.helpers import job_body, ready_dataset

pytestmark = pytest.mark.anyio

MIB = 1 << 20


@pytest.fixture
async def dataset(client, app, settings):
    return await ready_dataset(client, app, settings)  # 6 images: 2 steps per epoch at batch size 4


async def test_a_body_over_the_cap_is_a_413_before_parsing_or_the_api_key(client, settings):
    settings.auth_enabled = True  # no key sent: the size is refused first
    big = b'{"spec": "' + b"x" * (2 * MIB) + b'"}'
    declared = await client.post("/v1/jobs", content=big, headers={"content-type": "application/json"})

    async def chunks():  # no Content-Length: counted as it streams in
        for _ in range(64):
            yield b"x" * (64 * 1024)

    streamed = await client.post("/v1/jobs/validate", content=chunks())

    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_large"
        assert "the limit is 1048576 bytes (FT_MAX_REQUEST_BYTES)" in error["message"]
        assert error["request_id"] == response.headers["x-request-id"]


async def test_a_body_under_the_cap_still_reaches_the_route(client, settings):
    settings.auth_enabled = True
    response = await client.post("/v1/jobs", json={"spec": {}, "note": "x" * (MIB // 2)})
    assert response.status_code == 401  # read, then refused for the missing key as before


async def test_the_upload_has_its_own_limit_not_the_body_cap(client, app, settings):
    shown = await ready_dataset(client, app, settings, {f"train/c{i % 2}/{i}.bmp": _bmp(i) for i in range(12)})
    assert shown["bytes"] > MIB  # a data set archive over the 1 MiB body cap is accepted


def _bmp(seed: int) -> bytes:
    """A 200 x 200 BMP of noise: 120 KB that no archive compresses."""
    import io
    import random

    from PIL import Image

    image = Image.frombytes("RGB", (200, 200), random.Random(seed).randbytes(200 * 200 * 3))
    out = io.BytesIO()
    image.save(out, format="BMP")
    return out.getvalue()


@pytest.mark.parametrize(
    ("section", "setting", "param"),
    [
        ({"epochs": 1001}, "FT_MAX_EPOCHS", "spec.training.epochs"),
        ({"max_runtime": 8 * 24 * 3600}, "FT_MAX_RUNTIME_SECONDS", "spec.training.max_runtime"),
    ],
)
async def test_a_spec_past_the_operators_ceiling_is_a_422_naming_the_field(client, dataset, section, setting, param):
    for route in ("/v1/jobs", "/v1/jobs/validate"):
        response = await client.post(route, json=job_body(dataset["id"], training=section))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("spec_over_limit", param)
        assert setting in error["message"]


async def test_total_planned_steps_are_bounded_by_the_data_set(client, dataset, settings):
    settings.max_total_steps = 50  # 4 training images at batch size 4: one step per epoch
    assert (await client.post("/v1/jobs", json=job_body(dataset["id"], training={"epochs": 50}))).status_code == 201
    response = await client.post("/v1/jobs", json=job_body(dataset["id"], training={"epochs": 51}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "spec.training.epochs"
    assert "51 epochs of 1 steps plan 51 optimizer steps, over this server's limit of 50" in error["message"]
    assert "(FT_MAX_TOTAL_STEPS)" in error["message"]
    capped = job_body(dataset["id"], training={"epochs": 51, "max_steps": 50})
    assert (await client.post("/v1/jobs", json=capped)).status_code == 201  # max_steps cuts the plan


async def test_a_dry_run_of_a_billion_epochs_answers_in_bounded_time(app, client, dataset, settings):
    settings.max_epochs = settings.max_total_steps = 10**10  # an operator who lifted every ceiling
    body = job_body(dataset["id"], training={"epochs": 10**9}, scheduler={"name": "cosine", "interval": "step"})
    app.state.dry_runs.timeout_seconds = 300  # torch is imported by the first dry run: not timed
    assert (await client.post("/v1/jobs/validate", json=job_body(dataset["id"]))).status_code == 200
    began = time.perf_counter()
    response = await client.post("/v1/jobs/validate", json=body)
    took = time.perf_counter() - began
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["total_steps"] == 10**9
    assert len(plan["lr_preview"]["steps"]) <= 2001 and plan["lr_preview"]["steps"][-1] == 10**9 - 1
    assert took < 15, f"a dry run of 1e9 steps took {took:.1f}s"  # O(steps) took hours


async def test_a_dry_run_past_its_time_limit_is_a_503(app, client, dataset, settings):
    app.state.dry_runs.timeout_seconds = 0.001
    response = await client.post("/v1/jobs/validate", json=job_body(dataset["id"]))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "dry_run_timeout"
    assert "FT_DRY_RUN_TIMEOUT_SECONDS" in error["message"]


async def test_metrics_need_their_token_or_the_loopback_address(app, settings):
    async def scrape(client_host: str, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/metrics", headers=headers)

    assert (await scrape("127.0.0.1")).status_code == 200
    assert (await scrape("10.1.2.3")).status_code == 404
    settings.metrics_token = "s3cret-token"
    assert (await scrape("127.0.0.1")).status_code == 404  # with a token, the token is the only way in
    assert (await scrape("10.1.2.3", authorization="Bearer wrong")).status_code == 404
    allowed = await scrape("10.1.2.3", authorization="Bearer s3cret-token")
    assert allowed.status_code == 200 and "finetune_jobs" in allowed.text


async def test_the_embedded_server_answers_only_to_allowed_hosts(settings):
    embedded = settings.model_copy(update={"database_url": None, "home": settings.home / "embedded"})
    app = create_app(embedded)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/healthz", headers={"host": "localhost:8000"})).status_code == 200
            assert (await http.get("/healthz", headers={"host": "[::1]:8000"})).status_code == 200
            rebound = await http.get("/v1/jobs", headers={"host": "attacker.example:8000"})
    finally:
        app.state.queue.close()
        app.state.engine.dispose()
    assert rebound.status_code == 400
    error = rebound.json()["error"]
    assert error["code"] == "host_not_allowed" and "FT_ALLOWED_HOSTS" in error["message"]


async def test_keys_unused_here_still_authenticate_after_the_limits(client, app, settings):
    settings.auth_enabled = True
    with transaction(app.state.session_factory) as session:
        _, secret = create_api_key(session, "limits")
    response = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
