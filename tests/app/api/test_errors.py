"""No input gets a 500 or a traceback: malformed JSON, wrong content types, huge parameters, unknown
routes, and a route that crashes all answer with the error envelope."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

pytestmark = pytest.mark.anyio


def assert_envelope(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param", "details", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    if code:
        assert error["code"] == code
    return error


async def test_malformed_json_is_a_400(client):
    response = await client.post("/v1/jobs", content=b'{"spec": ', headers={"content-type": "application/json"})
    assert_envelope(response, 400, "invalid_json")


async def test_a_missing_or_wrong_body_is_a_422(client):
    assert_envelope(await client.post("/v1/jobs"), 422, "invalid_request")
    assert_envelope(await client.post("/v1/jobs", json=[1, 2]), 422)
    error = assert_envelope(await client.post("/v1/jobs", json={"spec": {"data": {}}, "extra": 1}), 422)
    assert {d["param"] for d in error["details"]} >= {"spec.data.path"}


async def test_wrong_content_type_is_a_clean_4xx(client):
    response = await client.post("/v1/jobs", content=b"spec: {}", headers={"content-type": "text/yaml"})
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


async def test_huge_or_wrong_query_parameters_are_422(client):
    assert_envelope(await client.get("/v1/jobs", params={"limit": 10**30}), 422)
    assert_envelope(await client.get("/v1/jobs", params={"limit": 0}), 422)
    assert_envelope(await client.get("/v1/jobs", params={"after": "x" * 10_000}), 422)
    assert_envelope(await client.get("/v1/jobs", params={"created_after": 10**20}), 422)
    error = assert_envelope(await client.get("/v1/jobs/" + "x" * 500), 422)
    assert error["param"] == "job_id"
    assert_envelope(await client.get("/v1/jobs/ftjob_x/events", params={"after": -1}), 422)


async def test_unknown_routes_and_methods(client):
    assert_envelope(await client.get("/v2/nothing"), 404, "not_found")
    assert_envelope(await client.put("/v1/jobs"), 405, "method_not_allowed")


async def test_an_unexpected_exception_is_a_500_without_traceback(app: FastAPI, client):
    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    response = await client.get("/v1/boom", headers={"X-Request-ID": "trace-me-42"})
    error = assert_envelope(response, 500, "internal_error")
    assert error["request_id"] == "trace-me-42"
    assert "secret" not in response.text and "Traceback" not in response.text


async def test_every_response_carries_a_request_id(client):
    response = await client.get("/healthz")
    assert response.headers["x-request-id"].startswith("req_")
    own = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert own.headers["x-request-id"].startswith("req_")


async def test_an_unknown_query_parameter_is_a_422_that_names_it(client):
    response = await client.get("/v1/jobs", params={"stauts": "failed"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "stauts" and "status" in error["message"]
    assert (await client.get("/v1/jobs", params={"metadata[team]": "vision"})).status_code == 200
