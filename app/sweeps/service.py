"""Sweeps: submission (the space checked like a spec), reads, cancel, and the driver that keeps up to
``max_parallel`` trials queued or running until ``max_trials`` have been asked.

Every trial is an ordinary job made by ``app.services.jobs.create_job`` with its ``sweep_id`` and trial number.
The driver (``advance``) runs under a lock on the sweep's row, so any number of callers may call it at once
and a retry repeats nothing: when a trial ends (the worker's finishing code path calls it), from the API's
periodic sweep (``advance_running``: the safety net for trials that end elsewhere, a cancel, a lost
worker), and when the sweep is made. Each pass first tells Optuna how the trials that ended did, then asks
it for new ones.

Optuna's writes are not part of the service's transaction: a trial it handed out whose job did not commit
(a rolled-back pass) is found by the next pass, under the lock, and marked failed in the study.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.db.models import Job, Sweep
from app.db.session import transaction
from app.dispatch.after_commit import send_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import Conflict, InvalidSpec, NotFound, ServiceError
from app.ids import new_id
from app.schemas.jobs import JobCreate
from app.services import idempotency, job_state
from app.services import jobs as job_service
from app.services.idempotency import IdempotencyKey
from app.settings import Settings
from app.statuses import JobStatus, SweepStatus
from app.sweeps import repository, study
from app.sweeps.schemas import (
    AshaStopping,
    BestTrial,
    MedianStopping,
    Objective,
    SweepCreate,
    SweepTrial,
    seconds,
)
from app.sweeps.schemas import Sweep as SweepView
from app.sweeps.space import Dimension, check_space, grid_points, parse_space, value_at, with_values
from training.spec import Spec, monitor_mode

if TYPE_CHECKING:
    import optuna

    from app.context import Runtime

log = logging.getLogger(__name__)


# --- submission -----------------------------------------------------------------------------


def create_sweep(
    session: Session,
    queue: TaskQueue,
    settings: Settings,
    project_id: str,
    request: SweepCreate,
    idempotency_key: IdempotencyKey | None = None,
) -> tuple[Sweep, int]:
    """Check the base spec and the space (every value of every path, and a few combinations, must make a
    valid spec), store the sweep, make its study and queue its first trials."""
    record = idempotency.replayed(session, project_id, idempotency_key)
    if record is not None:
        return get_sweep(session, project_id, record.resource_id), record.status_code
    dimensions = parse_space(request.space)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    max_trials = request.max_trials
    if request.algorithm == "grid":
        max_trials = min(max_trials, _grid_size(dimensions))
    resolved = _checked_base(request.spec, dimensions, seed)
    job_service.check_spec(session, settings, project_id, resolved)
    mode = request.objective.mode or monitor_mode(request.objective.metric)
    objective = request.objective.model_copy(update={"mode": mode})
    now = utcnow()
    sweep = Sweep(
        id=new_id("sweep"),
        project_id=project_id,
        name=request.name,
        base_spec=request.spec,
        space=request.space,
        algorithm=request.algorithm,
        objective=objective.model_dump(mode="json"),
        max_trials=max_trials,
        max_parallel=min(request.max_parallel, max_trials),
        early_stopping=request.early_stopping.model_dump(mode="json") if request.early_stopping else None,
        seed=seed,
        status=SweepStatus.RUNNING,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, sweep)
    found = study.open_study(settings, sweep.id, mode=mode)
    if request.algorithm == "grid":
        for point in grid_points(dimensions)[:max_trials]:
            found.enqueue_trial(point, skip_if_exists=True)  # the asks take these first, in order
    _fill(session, queue, settings, sweep, found)
    idempotency.remember(session, project_id, idempotency_key, sweep.id, 201)
    return sweep, 201


def _grid_size(dimensions: list[Dimension]) -> int:
    size = 1
    for dim in dimensions:
        if not dim.is_discrete:
            raise InvalidSpec(
                f"{dim.param}: a grid sweep takes grid or choice values, not a {dim.kind} range", param=dim.param
            )
        size *= len(dim.values)
    return size


def _checked_base(base: dict[str, Any], dimensions: list[Dimension], seed: int) -> Spec:
    try:
        Spec.model_validate(base)
    except ValidationError as error:
        problem = error.errors()[0]
        loc = ".".join(str(part) for part in problem["loc"])
        raise InvalidSpec(f"spec.{loc}: {problem['msg']}", param=f"spec.{loc}") from None
    return check_space(base, dimensions, seed)


# --- reads and cancel -----------------------------------------------------------------------


def get_sweep(session: Session, project_id: str, sweep_id: str) -> Sweep:
    sweep = repository.get(session, project_id, sweep_id)
    if sweep is None:
        raise NotFound(f"no sweep {sweep_id}", param="sweep_id")
    return sweep


def list_sweeps(
    session: Session, project_id: str, *, statuses: Collection[SweepStatus] = (), after: str | None, limit: int
) -> tuple[list[SweepView], bool]:
    """A page of sweeps, shown; the trials of the whole page come in one query, whatever its length."""
    rows, has_more = repository.page(session, project_id, statuses=statuses, after=after, limit=limit)
    trials = repository.trials_of(session, [row.id for row in rows])
    return [_view(row, trials[row.id]) for row in rows], has_more


def cancel_sweep(session: Session, settings: Settings, project_id: str, sweep_id: str) -> Sweep:
    """No more trials; the queued and running ones are cancelled (a running one stops at its next step).
    Cancelling a cancelled sweep changes nothing but closing its study's open trials (see ``_close_study``);
    a finished one is a 409."""
    sweep = get_sweep(session, project_id, sweep_id)
    sweep = repository.locked(session, sweep.id) or sweep
    if sweep.status == SweepStatus.SUCCEEDED:
        raise Conflict(f"sweep {sweep_id} has already finished", code="sweep_done")
    if sweep.status == SweepStatus.RUNNING:
        now = utcnow()
        sweep.status, sweep.updated_at, sweep.finished_at = SweepStatus.CANCELLED, now, now
    outcomes: dict[int, TrialOutcome] = {}
    for job in repository.trials(session, sweep.id):
        status = JobStatus(job.status)
        if not status.is_terminal and status != JobStatus.CANCELLING:
            status = job_state.request_cancel(session, job.id)
        if job.sweep_trial is not None:
            outcomes[job.sweep_trial] = TrialOutcome(status, trial_objective(job, sweep))
    name, mode = sweep.id, sweep.objective["mode"]
    send_after_commit(session, lambda: _close_study(settings, name, mode, outcomes))
    return sweep


def _close_study(settings: Settings, name: str, mode: str, outcomes: dict[int, TrialOutcome]) -> None:
    """Tell the cancelled sweep's study how each of its open trials ended, so that none stays RUNNING: a trial
    whose job ended as it would have been told by the driver; one still stopping (``cancelling``) FAIL.

    FAIL rather than PRUNED: a cancel is the caller's decision, not the pruner's judgement of the parameters,
    and Optuna's samplers learn from pruned trials' intermediate values (TPE ranks them) while they skip
    failed ones; the driver already tells a ``cancelled`` trial FAIL. Run after the cancel commits (a rolled
    back cancel closes nothing); a study that cannot be reached then keeps its RUNNING trials until the
    sweep is cancelled again, which nothing else reads (the driver leaves a cancelled sweep alone)."""
    _settle(study.open_study(settings, name, mode=mode), outcomes, closing=True)


def show(session: Session, sweep: Sweep) -> SweepView:
    """The sweep with its trials (parameters, objective, status) and its best trial."""
    return _view(sweep, repository.trials(session, sweep.id))


def _view(sweep: Sweep, jobs: list[Job]) -> SweepView:
    objective = Objective.model_validate(sweep.objective)
    trials = [(job, _trial(job, sweep)) for job in jobs]
    scored = [pair for pair in trials if pair[1].status == JobStatus.SUCCEEDED and pair[1].objective is not None]
    best = None
    if scored:
        sign = 1 if objective.mode == "max" else -1
        job, trial = max(scored, key=lambda pair: (sign * (pair[1].objective or 0.0), -pair[1].number))
        best = BestTrial(**trial.model_dump(), spec=job.spec)
    stopping = sweep.early_stopping
    return SweepView(
        id=sweep.id,
        name=sweep.name,
        status=SweepStatus(sweep.status),
        algorithm=sweep.algorithm,
        objective=objective,
        space=sweep.space,
        base_spec=sweep.base_spec,
        max_trials=sweep.max_trials,
        max_parallel=sweep.max_parallel,
        early_stopping=(AshaStopping if stopping["type"] == "asha" else MedianStopping).model_validate(stopping)
        if stopping
        else None,
        seed=sweep.seed,
        trial_counts=dict(Counter(str(trial.status) for _, trial in trials)),
        trials=[trial for _, trial in trials],
        best_trial=best,
        created_at=seconds(sweep.created_at) or 0,
        updated_at=seconds(sweep.updated_at) or 0,
        finished_at=seconds(sweep.finished_at),
    )


def _trial(job: Job, sweep: Sweep) -> SweepTrial:
    return SweepTrial(
        job_id=job.id,
        number=job.sweep_trial or 0,
        status=JobStatus(job.status),
        params={path: value_at(job.spec, path) for path in sweep.space},
        objective=trial_objective(job, sweep),
        epochs=job.epochs_completed,
    )


def trial_objective(job: Job, sweep: Sweep) -> float | None:
    """The objective a trial reached: its metric at the last epoch it completed."""
    return study.finite((job.latest_metrics or {}).get(sweep.objective["metric"]))


# --- the driver -----------------------------------------------------------------------------


def advance(services: Runtime, sweep_id: str) -> None:
    """One pass of the driver for one sweep, in a transaction of its own (idempotent: see the module)."""
    with transaction(services.factory) as session:
        sweep = repository.locked(session, sweep_id)
        if sweep is None or sweep.status != SweepStatus.RUNNING:
            return
        found = study.open_study(services.settings, sweep.id, mode=sweep.objective["mode"])
        _fill(session, services.queue, services.settings, sweep, found)


def advance_running(services: Runtime) -> list[str]:
    """The periodic safety net: a pass over every running sweep. Returns the ids it could not advance."""
    with transaction(services.factory) as session:
        sweep_ids = repository.running_ids(session)
    stuck = []
    for sweep_id in sweep_ids:
        try:
            advance(services, sweep_id)
        except Exception:  # one sweep's trouble (its study unreachable) must not stop the others'
            log.exception("sweep %s: could not advance it; the next pass retries", sweep_id)
            stuck.append(sweep_id)
    return stuck


def _fill(session: Session, queue: TaskQueue, settings: Settings, sweep: Sweep, found: optuna.Study) -> None:
    """Settle the trials that ended, then ask for trials until ``max_parallel`` are active or ``max_trials``
    have been asked; a sweep with nothing active and nothing left to ask has succeeded."""
    from optuna.trial import TrialState

    trials = repository.trials(session, sweep.id)
    _settle(found, {job.sweep_trial: _outcome(job, sweep) for job in trials if job.sweep_trial is not None})
    active = sum(not JobStatus(job.status).is_terminal for job in trials)
    # Every trial handed out counts, however it ended (enqueued grid points wait and do not).
    handed_out = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    asked = len(found.get_trials(deepcopy=False, states=handed_out))
    dimensions = parse_space(sweep.space)
    distributions = {dim.path: study.distribution(dim) for dim in dimensions}
    while active < sweep.max_parallel and asked < sweep.max_trials:
        found.sampler = study.sampler_for(sweep.algorithm, sweep.seed, asked, sweep.max_trials)
        trial = found.ask(distributions)
        asked += 1
        try:
            _create_trial_job(session, queue, settings, sweep, trial.number, trial.params)
        except ServiceError as error:  # the space was checked on samples; this draw still made a bad spec
            log.warning("sweep %s: trial %d could not be queued: %s", sweep.id, trial.number, error)
            found.tell(trial.number, state=TrialState.FAIL)
            continue
        active += 1
    if active == 0 and asked >= sweep.max_trials:
        now = utcnow()
        sweep.status, sweep.updated_at, sweep.finished_at = SweepStatus.SUCCEEDED, now, now
        log.info("sweep %s: all %d trials ended", sweep.id, sweep.max_trials)


@dataclass(frozen=True)
class TrialOutcome:
    """A trial's job as the study is told of it: its status and the objective it reached."""

    status: JobStatus
    objective: float | None


def _outcome(job: Job, sweep: Sweep) -> TrialOutcome:
    return TrialOutcome(JobStatus(job.status), trial_objective(job, sweep))


def _settle(found: optuna.Study, outcomes: dict[int, TrialOutcome], *, closing: bool = False) -> None:
    """Tell the study how each trial that ended did; fail its trials whose job never committed, and with
    ``closing`` (a cancelled sweep) those whose job is still stopping too."""
    from optuna.trial import TrialState

    for frozen in found.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        outcome = outcomes.get(frozen.number)
        if outcome is None:
            found.tell(frozen.number, state=TrialState.FAIL)  # asked by a pass that rolled back
            continue
        if not outcome.status.is_terminal:
            if closing:
                found.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            continue
        if outcome.status == JobStatus.SUCCEEDED and outcome.objective is not None:
            found.tell(frozen.number, outcome.objective, skip_if_finished=True)
        elif outcome.status == JobStatus.PRUNED:
            found.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:  # failed, cancelled, or succeeded without the objective's metric
            found.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)


def _create_trial_job(
    session: Session, queue: TaskQueue, settings: Settings, sweep: Sweep, number: int, params: dict[str, Any]
) -> Job:
    try:
        spec = Spec.model_validate(with_values(sweep.base_spec, params))
    except ValidationError as error:
        raise InvalidSpec(f"trial {number} ({params}): {error.errors()[0]['msg']}") from None
    label = sweep.name or sweep.id
    request = JobCreate(
        spec=spec, name=f"{label} trial {number}"[:200], metadata={"sweep": sweep.id, "sweep_trial": str(number)}
    )
    job, _ = job_service.create_job(session, queue, settings, sweep.project_id, request)
    job.sweep_id, job.sweep_trial = sweep.id, number
    session.flush()
    return job
