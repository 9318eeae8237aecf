"""The API's shapes of exports: a request (``ExportCreate``) and the export a task makes (``JobExport``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.clock import unix_seconds
from app.schemas.jobs import JobError

if TYPE_CHECKING:
    from app.db.models import JobExport as ExportRow

# training.exports' range, repeated here so that the API imports no torch (a test keeps them equal).
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 23, 18


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = Field(
        description="onnx (model.onnx) or torchscript (model.torchscript.pt)"
    )
    dynamic_batch: bool = Field(True, description="ONNX: any batch size; false fixes it at 32. TorchScript: any batch.")
    opset: int = Field(DEFAULT_OPSET, ge=MIN_OPSET, le=MAX_OPSET, description="ONNX opset (ignored for TorchScript).")


class JobExport(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    job_id: str
    format: Literal["onnx", "torchscript"]
    dynamic_batch: bool
    opset: int | None
    status: Literal["queued", "running", "succeeded", "failed"]
    file: str | None = Field(description="The artifact's name, once the export succeeded.")
    card_entry: dict[str, Any] | None = Field(
        description="What model.json says of the export: input name and shape, normalization, opset, and the "
        "parity check (max |logit difference| against PyTorch on 32 validation images, fp32)."
    )
    error: JobError | None
    created_at: int
    finished_at: int | None

    @classmethod
    def from_row(cls, row: ExportRow) -> JobExport:
        entry = row.parity
        return cls(
            id=row.id,
            job_id=row.job_id,
            format=row.format,
            dynamic_batch=row.dynamic_batch,
            opset=row.opset,
            status=row.status,
            file=entry["file"] if entry else None,
            card_entry=entry,
            error=JobError(code=row.error_code, message=row.error_message or "") if row.error_code else None,
            created_at=unix_seconds(row.created_at),
            finished_at=unix_seconds(row.finished_at) if row.finished_at else None,
        )


class ExportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobExport]
