"""``/v1/spec/schema``: the JSON schema of a job spec, every model named."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.deps import get_caller
from app.api.errors import error_responses
from training.spec import spec_json_schema

router = APIRouter(prefix="/v1/spec", tags=["spec"], dependencies=[Depends(get_caller)])


@router.get("/schema", summary="The spec's JSON schema", responses=error_responses())
def get_spec_schema() -> dict[str, Any]:
    return spec_json_schema()
