"""A job's integrations over the API: stored and shown with the job, refused when this server has no MLflow
tracking server, and the same through the OpenAI surface. The worker's side: tests/worker/test_mlflow.py."""

from __future__ import annotations

import pytest

from tests.app.helpers import job_body, ready_dataset

pytestmark = pytest.mark.anyio

MLFLOW = {"type": "mlflow", "mlflow": {"experiment": "pets", "run_name": "first", "tags": {"team": "cv"}}}


async def test_an_mlflow_integration_is_stored_or_refused_with_a_reason(client, app, settings):
    dataset = await ready_dataset(client, app, settings)
    refused = await client.post("/v1/jobs", json={**job_body(dataset["id"]), "integrations": [MLFLOW]})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "integration_unavailable"
    assert refused.json()["error"]["param"] == "integrations.0"

    app.state.settings = settings.model_copy(update={"mlflow_tracking_uri": "http://mlflow.internal:5000"})
    created = await client.post("/v1/jobs", json={**job_body(dataset["id"]), "integrations": [MLFLOW]})
    assert created.status_code == 201, created.text
    shown = (await client.get(f"/v1/jobs/{created.json()['id']}")).json()
    assert shown["integrations"] == [MLFLOW]
    wandb = {"type": "wandb", "wandb": {"project": "x"}}
    bad = await client.post("/v1/jobs", json={**job_body(dataset["id"]), "integrations": [wandb]})
    assert bad.status_code == 422 and bad.json()["error"]["param"].startswith("integrations.0")

    body = {"model": "resnet18", "training_file": dataset["id"], "integrations": [MLFLOW]}
    through_openai = await client.post("/v1/fine_tuning/jobs", json={**body, "spec": {"data": {"image_size": 32}}})
    assert through_openai.status_code == 200, through_openai.text
    assert through_openai.json()["integrations"] == [MLFLOW]
