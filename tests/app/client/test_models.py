"""The client's models are the API's own, and importing the client pulls in none of the service's heavy parts."""

from __future__ import annotations

import subprocess
import sys

from app.client import models as client_models
from app.schemas import datasets, health, jobs


def test_the_client_parses_with_the_apis_own_schemas():
    assert client_models.Job is jobs.Job and client_models.Dataset is datasets.Dataset
    assert client_models.JobEvent is jobs.JobEvent and client_models.Readiness is health.Readiness


def test_the_client_imports_nothing_heavy():
    heavy = "('torch', 'torchvision', 'fastapi', 'starlette', 'sqlalchemy', 'celery', 'redis')"
    code = f"import sys, app.client; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
