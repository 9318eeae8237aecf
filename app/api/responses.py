"""A response already serialised from its pydantic model.

A route that returns a model has FastAPI validate it against ``response_model`` again and serialise it (in a
thread of its own when the route is a plain ``def``). The hot routes build their model from rows they read
themselves, so that check repeats the model's own validation: they return this instead (FastAPI passes a
``Response`` through untouched) and keep ``response_model=`` for the OpenAPI schema."""

from __future__ import annotations

from fastapi.responses import Response
from pydantic import BaseModel


class ModelJSONResponse(Response):
    media_type = "application/json"

    def __init__(self, model: BaseModel, status_code: int = 200) -> None:
        # What FastAPI sends for a response model: by alias, compact, UTF-8.
        super().__init__(model.model_dump_json(by_alias=True), status_code=status_code)


class JSONBytesResponse(Response):
    """JSON serialised already (``app.api.hot_reads``: the polled reads)."""

    media_type = "application/json"
