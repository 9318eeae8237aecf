"""``/v1/jobs/{job_id}/exports``: export a succeeded job's weights to ONNX or TorchScript, and follow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import CallerDep, QueueDep, SessionDep
from app.api.errors import error_responses
from app.api.jobs import JobId
from app.schemas.exports import ExportCreate, ExportList, JobExport
from app.services import exports

router = APIRouter(prefix="/v1/jobs", tags=["exports"])

ExportId = Annotated[str, Path(max_length=64, description="An export id (exp_...).")]


@router.post(
    "/{job_id}/exports",
    status_code=202,
    response_model=JobExport,
    summary="Export a job's weights",
    responses=error_responses(404, 409),
)
def create_export(
    job_id: JobId, body: ExportCreate, caller: CallerDep, session: SessionDep, queue: QueueDep
) -> JobExport:
    """Queues an export of the published weights (ONNX or TorchScript). It is checked before it is published:
    the exported model and the PyTorch model run 32 validation images, and their logits must agree within
    1e-4 (fp32); then ``model.onnx`` or ``model.torchscript.pt`` joins the artifacts and ``model.json`` lists it.
    A job that has not succeeded is a 409; so is an export of the same format already under way."""
    return JobExport.from_row(exports.request_export(session, queue, caller.project_id, job_id, body))


@router.get(
    "/{job_id}/exports", response_model=ExportList, summary="List a job's exports", responses=error_responses(404)
)
def list_exports(job_id: JobId, caller: CallerDep, session: SessionDep) -> ExportList:
    return ExportList(
        data=[JobExport.from_row(row) for row in exports.list_exports(session, caller.project_id, job_id)]
    )


@router.get(
    "/{job_id}/exports/{export_id}", response_model=JobExport, summary="Get an export", responses=error_responses(404)
)
def get_export(job_id: JobId, export_id: ExportId, caller: CallerDep, session: SessionDep) -> JobExport:
    return JobExport.from_row(exports.get_export(session, caller.project_id, job_id, export_id))
