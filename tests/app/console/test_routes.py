"""The console's page and files, served by the API itself (on SQLite and on PostgreSQL + Redis): everything it
loads comes from this origin, and the API's own routes are untouched."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.anyio


async def test_the_page_loads_only_files_this_service_serves(client):
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "connect-src 'self'" in policy
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert {"/console/dist/app.js", "/console/dist/app.css"} <= set(assets)
    for asset in assets:
        if asset.startswith("data:"):
            continue
        assert asset.startswith("/"), f"{asset}: not from this service"
        served = await client.get(asset)
        assert served.status_code == 200, asset
    script = (await client.get("/console/dist/app.js")).text
    assert not re.search(r"https?://(?!github\.com|127\.0\.0\.1)[\w.-]+/[\w./-]+\.(?:js|css|woff2?)", script)


async def test_the_api_keeps_its_routes_and_unknown_files_are_404_envelopes(client):
    assert (await client.get("/v1/jobs")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    missing = await client.get("/console/dist/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]  # the page is not part of the API
