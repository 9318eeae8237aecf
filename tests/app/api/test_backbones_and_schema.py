"""The backbone registry and the spec's schema, over HTTP."""

from __future__ import annotations

import pytest

from training.catalog import backbone_names
from training.spec import spec_json_schema

pytestmark = pytest.mark.anyio


async def test_list_backbones(client):
    listed = (await client.get("/v1/backbones")).json()
    assert [b["name"] for b in listed["data"]] == backbone_names()
    resnet = next(b for b in listed["data"] if b["name"] == "resnet18")
    assert resnet["object"] == "backbone" and resnet["num_params"] > 11_000_000
    assert {w["name"] for w in resnet["weights"]} == {"IMAGENET1K_V1"}
    assert all(isinstance(w["cached"], bool) for w in resnet["weights"])


async def test_cached_weights_show_as_cached(client, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    shown = (await client.get("/v1/backbones/resnet18")).json()
    assert shown["weights"][0]["cached"] is False
    cache = tmp_path / "hub" / "checkpoints" / shown["weights"][0]["file_name"]
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"w")
    assert (await client.get("/v1/backbones/resnet18")).json()["weights"][0]["cached"] is True


async def test_unknown_backbone_is_a_404_naming_the_closest(client):
    response = await client.get("/v1/backbones/resnt50")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_backbone" and "resnet50" in error["message"]


async def test_spec_schema(client):
    assert (await client.get("/v1/spec/schema")).json() == spec_json_schema()


async def test_openapi_names_every_model(client):
    schema = (await client.get("/openapi.json")).json()
    names = set(schema["components"]["schemas"])
    assert {"Job", "JobCreate", "Dataset", "DatasetList", "JobList", "ErrorResponse", "DryRun", "Spec"} <= names
    assert not [name for name in names if name.startswith("Body_")]
