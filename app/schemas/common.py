"""Shapes every resource shares: the error envelope, list pages, deletion receipts."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    param: str | None = Field(None, description="The field the problem is about, as a dotted path.")
    message: str
    type: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, invalid_spec, dataset_not_ready...")
    message: str = Field(description="What went wrong and what to do about it.")
    param: str | None = Field(None, description="The field at fault, e.g. spec.scheduler.milestones.")
    details: list[ErrorDetail] = Field(default_factory=list, description="Every problem, when there are several.")
    request_id: str | None = Field(None, description="Quote it when reporting a server error.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(title="ErrorResponse")
    error: ErrorBody


T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    """A page of a list, newest first unless the endpoint says otherwise. Pass ``last_id`` as ``after``."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


def error_payload(
    code: str,
    message: str,
    *,
    param: str | None = None,
    details: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    body = ErrorBody(
        code=code,
        message=message,
        param=param,
        details=[ErrorDetail(**detail) for detail in details or []],
        request_id=request_id,
    )
    return ErrorResponse(error=body).model_dump(mode="json")
