"""Liveness, readiness (database, broker, store) and Prometheus metrics."""

from __future__ import annotations

import httpx
import pytest

from app.main import create_app

pytestmark = pytest.mark.anyio


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_checks_database_broker_and_store(client, settings):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    checks = {"database": "ok", "broker": "ok", "store": "ok"}
    if settings.redis_url:  # production: the live event stream too
        checks["event_stream"] = "ok"
    assert response.json() == {"status": "ready", "checks": checks}


async def test_readyz_names_what_is_unreachable(settings, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store should be")
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "artifacts_dir": blocked / "artifacts"})
    app = create_app(broken)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            response = await client.get("/readyz")
    finally:
        app.state.engine.dispose()
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    # The failing dependency is named; its exception text (hosts, ports, paths) stays in the log.
    assert checks["broker"] == "unavailable"
    assert checks["store"] == "unavailable"
    assert "6379" not in response.text and "127.0.0.1" not in response.text and "not-a-folder" not in response.text


async def test_metrics_count_requests_by_route(client):
    await client.get("/v1/jobs")
    await client.get("/v1/jobs/ftjob_01JAAAAAAAAAAAAAAAAAAAAAAA")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'finetune_http_requests_total{method="GET",route="/v1/jobs",status="200"} 1.0' in text
    assert 'finetune_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    assert 'finetune_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/jobs"}' in text
