"""``/v1/sweeps``: submit a hyperparameter sweep, list, get (trials and the best one), cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.api.deps import CallerDep, IdempotencyKeyHeader, QueueDep, SessionDep, SettingsDep
from app.api.errors import error_responses
from app.api.pagination import After, Limit, list_page
from app.services.idempotency import IdempotencyKey, request_hash
from app.statuses import SweepStatus
from app.sweeps import service
from app.sweeps.schemas import Sweep, SweepCreate, SweepList

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

SweepId = Annotated[str, Path(max_length=64, description="A sweep id (sweep_...).")]


@router.post("", status_code=201, response_model=Sweep, summary="Submit a sweep", responses=error_responses(404, 409))
def create_sweep(
    body: SweepCreate,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Sweep:
    """Checks the base spec and the space (every value of every path must make a valid spec: a 422 names the
    path), stores the sweep and queues its first `max_parallel` trials, each an ordinary job."""
    key = None
    if idempotency_key is not None:
        digest = request_hash(body.model_dump(mode="json"))
        key = IdempotencyKey(idempotency_key, "sweeps.create", digest, settings.idempotency_ttl_seconds)
    row, status = service.create_sweep(session, queue, settings, caller.project_id, body, key)
    response.status_code = status
    return service.show(session, row)


@router.get("", response_model=SweepList, summary="List sweeps", responses=error_responses())
def list_sweeps(
    caller: CallerDep,
    session: SessionDep,
    status: Annotated[list[SweepStatus] | None, Query(max_length=8)] = None,
    after: After = None,
    limit: Limit = 20,
) -> SweepList:
    """Newest first; `status` (repeatable) keeps the sweeps in those statuses."""
    views, has_more = service.list_sweeps(session, caller.project_id, statuses=status or (), after=after, limit=limit)
    return list_page(SweepList, views, has_more, lambda view: view)


@router.get("/{sweep_id}", response_model=Sweep, summary="Get a sweep", responses=error_responses(404))
def get_sweep(sweep_id: SweepId, caller: CallerDep, session: SessionDep) -> Sweep:
    """Its status, its trials with their parameters, objective and status, and the best trial with its spec."""
    return service.show(session, service.get_sweep(session, caller.project_id, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=Sweep, summary="Cancel a sweep", responses=error_responses(404, 409))
def cancel_sweep(sweep_id: SweepId, caller: CallerDep, session: SessionDep, settings: SettingsDep) -> Sweep:
    """No more trials; its queued and running trials are cancelled (a running one stops at its next step), and
    its study's open trials are closed (told FAIL, or how their job ended)."""
    return service.show(session, service.cancel_sweep(session, settings, caller.project_id, sweep_id))
