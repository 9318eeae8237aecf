"""Where the client connects and who it says it is: arguments first, then FT_API_URL and FT_API_KEY."""

from __future__ import annotations

import httpx

from app.client import Client


def test_the_url_and_key_come_from_the_environment_unless_given(monkeypatch):
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    transport = httpx.MockTransport(answer)
    monkeypatch.delenv("FT_API_URL", raising=False)
    monkeypatch.delenv("FT_API_KEY", raising=False)
    with Client(transport=transport) as client:
        client.healthz()
    monkeypatch.setenv("FT_API_URL", "http://finetune.internal:9000/")
    monkeypatch.setenv("FT_API_KEY", "ftk_env")
    with Client(transport=transport) as client:
        client.healthz()
    with Client("http://other:1", "ftk_arg", transport=transport) as client:
        client.healthz()
    assert [str(r.url) for r in seen] == [
        "http://127.0.0.1:8000/healthz",
        "http://finetune.internal:9000/healthz",
        "http://other:1/healthz",
    ]
    assert [r.headers.get("authorization") for r in seen] == [None, "Bearer ftk_env", "Bearer ftk_arg"]
    assert seen[0].headers["user-agent"].startswith("finetune-client/")
