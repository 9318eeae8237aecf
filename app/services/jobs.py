"""Jobs for clients: submission (with every check the engine would otherwise fail on later), reads,
lists, cancel, and the dry run. Status changes go through ``app.services.job_state``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.base import attach, insert_all
from app.db.models import Artifact, Checkpoint, Dataset, EpochMetrics, Job, JobEvent, JobMetadata
from app.dispatch.admission import Admission, admission_of, dispatch_after_commit
from app.dispatch.broker import TaskQueue
from app.errors import Conflict, InvalidSpec, NotFound, ServiceError, ServiceUnavailable, Unprocessable
from app.ids import is_id, new_id
from app.repositories import datasets, job_records, jobs
from app.repositories.jobs import JobFilters
from app.schemas.jobs import DryRun, JobCreate
from app.services import idempotency, job_state
from app.services.idempotency import IdempotencyKey
from app.services.transactions import short_transaction
from app.settings import Settings
from app.statuses import DatasetStatus, EventType, JobStatus
from app.store import ArtifactStore
from training import artifacts
from training.catalog import check_weights_available, get_backbone
from training.errors import TrainingError, WeightsUnavailable
from training.imagefolder import scan_image_folder
from training.plan import PlannedRun
from training.spec import Spec, missing_split_problem


@dataclass(frozen=True)
class CheckedSpec:
    """A spec that passed the submission checks, with what it reads resolved."""

    spec: Spec
    dataset: Dataset | None
    init_from: str | None


# --- checks at submission -------------------------------------------------------------------


def _under_allowed_root(settings: Settings, raw: str, param: str) -> Path:
    """A host path from a client: accepted only inside a folder an operator allowed (symlinks resolved)."""
    if not settings.allowed_data_roots:
        raise InvalidSpec(
            f"{param} names a path on the server; over the API name an uploaded data set or an earlier job by id "
            "(this server allows no host folders: FT_ALLOWED_DATA_ROOTS)",
            param=param,
            code="path_not_allowed",
        )
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(root.resolve()) for root in settings.allowed_data_roots):
        raise InvalidSpec(
            f"{param} lies outside the folders this server allows ({', '.join(map(str, settings.allowed_data_roots))})",
            param=param,
            code="path_not_allowed",
        )
    if not path.exists():
        raise InvalidSpec(f"{param}: {raw} does not exist on the server", param=param)
    return path


def _check_weights(settings: Settings, spec: Spec) -> None:
    if spec.backbone.weights is None:
        return
    info = get_backbone(spec.backbone.name)
    weights = info.find_weights(spec.backbone.weights)
    if weights is None:  # the spec model refuses these already
        raise InvalidSpec(f"{info.name} has no weights {spec.backbone.weights}", param="spec.backbone.weights")
    try:
        check_weights_available(weights, settings.engine.allow_weight_downloads)
    except WeightsUnavailable as error:
        raise InvalidSpec(
            f"{info.name}: {error.message}; or choose weights that GET /v1/backbones/{{name}} shows as cached, "
            "or train from scratch (weights: null)",
            param="spec.backbone.weights",
            code=error.code,
        ) from None


def _check_dataset(session: Session, project_id: str, dataset_id: str, *, lock: bool) -> Dataset:
    dataset = datasets.get(session, project_id, dataset_id, for_share=lock)
    if dataset is None:
        raise NotFound(f"no data set {dataset_id} in this project", param="spec.data.dataset", code="dataset_not_found")
    if dataset.status != DatasetStatus.READY:
        why = f": {dataset.error_message}" if dataset.status == DatasetStatus.FAILED else "; retry once it is ready"
        raise Conflict(
            f"data set {dataset_id} is {dataset.status}, not ready{why}",
            param="spec.data.dataset",
            code="dataset_not_ready",
        )
    return dataset


def _check_monitors(spec: Spec, dataset: Dataset) -> None:
    """A monitor on a split the run will not have (val_ with val_split 0 and no val/; test_ without test/)."""
    counts = dataset.counts or {}
    splits = {"train"} | {name for name in ("val", "test") if counts.get(name)}
    if spec.data.val_split > 0:
        splits.add("val")
    for where, metric in spec.monitors().items():
        problem = missing_split_problem(where, metric, splits)
        if problem is not None:
            raise InvalidSpec(f"{problem} (data set {dataset.id})", param=f"spec.{where}")


def _check_init_from(session: Session, settings: Settings, project_id: str, spec: Spec) -> str | None:
    source = spec.backbone.init_from
    param = "spec.backbone.init_from"
    if source is None:
        return None
    if is_id("job", source):
        job = jobs.get(session, project_id, source)
        if job is None:
            raise InvalidSpec(f"no job {source} in this project", param=param, code="init_from_invalid")
        if job.status != JobStatus.SUCCEEDED or job_records.artifact(session, source, artifacts.WEIGHTS) is None:
            message = f"job {source} is {job.status}: only a succeeded job's published weights can be a start"
            raise InvalidSpec(message, param=param, code="init_from_invalid")
        _same_backbone(job.spec, spec, source)
        return source
    if is_id("checkpoint", source):
        checkpoint = job_records.checkpoint(session, project_id, source)
        if checkpoint is None or checkpoint.deleted_at is not None:
            raise InvalidSpec(f"no checkpoint {source} in this project", param=param, code="init_from_invalid")
        owner_job = jobs.get_any(session, checkpoint.job_id)
        if owner_job is not None:
            _same_backbone(owner_job.spec, spec, source)
        return source
    if source.startswith(("ftjob_", "ckpt_")):
        raise InvalidSpec(f"{source} is not a well-formed job or checkpoint id", param=param, code="init_from_invalid")
    _under_allowed_root(settings, source, param)
    return source


def _same_backbone(earlier: dict[str, Any], spec: Spec, source: str) -> None:
    name = earlier["backbone"]["name"]
    if name != spec.backbone.name:
        raise InvalidSpec(
            f"{source} trained {name}; its weights cannot start a {spec.backbone.name}: set backbone.name to {name}",
            param="spec.backbone.init_from",
            code="init_from_invalid",
        )


def check_run_length(settings: Settings, spec: Spec) -> None:
    """The operator's ceilings on epochs and wall-clock time: a 422 naming the field and the setting."""
    if spec.training.epochs > settings.max_epochs:
        raise InvalidSpec(
            f"spec.training.epochs: {spec.training.epochs} is over this server's limit of {settings.max_epochs} "
            "epochs (FT_MAX_EPOCHS)",
            param="spec.training.epochs",
            code="spec_over_limit",
        )
    runtime = spec.training.max_runtime.total_seconds()
    if runtime > settings.max_runtime_seconds:
        raise InvalidSpec(
            f"spec.training.max_runtime: {runtime:.0f} s is over this server's limit of "
            f"{settings.max_runtime_seconds} s (FT_MAX_RUNTIME_SECONDS)",
            param="spec.training.max_runtime",
            code="spec_over_limit",
        )


def check_planned_steps(settings: Settings, spec: Spec, train_counts: list[int], has_val: bool) -> PlannedRun:
    """The operator's ceiling on optimizer steps, from the data set's class counts (no images read)."""
    plan = PlannedRun.of(spec, train_counts, has_val=has_val)
    if plan.total_steps > settings.max_total_steps:
        raise InvalidSpec(
            f"spec.training.epochs: {spec.training.epochs} epochs of {plan.steps_per_epoch} steps plan "
            f"{plan.total_steps} optimizer steps, over this server's limit of {settings.max_total_steps} "
            "(FT_MAX_TOTAL_STEPS); lower the epochs, raise data.batch_size or set training.max_steps",
            param="spec.training.epochs",
            code="spec_over_limit",
        )
    return plan


def check_spec(
    session: Session,
    settings: Settings,
    project_id: str,
    spec: Spec,
    *,
    lock_dataset: bool = False,
    known: dict[tuple[str, str], Dataset] | None = None,
) -> CheckedSpec:
    """What the engine would refuse later, refused now: a run longer than the operator allows, a data set
    that is missing or not ready, a host path outside the allowed folders, pretrained weights this server
    cannot get, a bad ``init_from``. ``known``: the data sets this transaction has read and checked already
    (by project and id), and where this one goes."""
    check_run_length(settings, spec)
    dataset = None
    if spec.data.dataset is not None:
        place = (project_id, spec.data.dataset)
        dataset = known.get(place) if known is not None else None
        if dataset is None:
            dataset = _check_dataset(session, project_id, spec.data.dataset, lock=lock_dataset)
            if known is not None:
                known[place] = dataset
        check_planned_steps(settings, spec, *_dataset_counts(dataset))
        _check_monitors(spec, dataset)
    elif spec.data.path is not None:
        _under_allowed_root(settings, spec.data.path, "spec.data.path")
    _check_weights(settings, spec)
    init_from = _check_init_from(session, settings, project_id, spec)
    return CheckedSpec(spec=spec, dataset=dataset, init_from=init_from)


def _check_integrations(settings: Settings, request: JobCreate) -> list[dict[str, Any]] | None:
    if not request.integrations:
        return None
    if settings.mlflow_tracking_uri is None:
        raise Unprocessable(
            "this server has no MLflow tracking server (an operator sets FT_MLFLOW_TRACKING_URI)",
            param="integrations.0",
            code="integration_unavailable",
        )
    return [integration.model_dump(mode="json") for integration in request.integrations]


# --- jobs -----------------------------------------------------------------------------------


class Submissions:
    """What a transaction's job creations read once and share: each project's admission (counting the jobs
    admitted since), each data set's row (locked against deletion until the commit)."""

    def __init__(self) -> None:
        self.admissions: dict[str, Admission] = {}
        self.datasets: dict[tuple[str, str], Dataset] = {}

    def admission(self, session: Session, settings: Settings, project_id: str) -> Admission:
        found = self.admissions.get(project_id)
        if found is None:
            found = self.admissions[project_id] = admission_of(session, settings, project_id)
        return found


def create_job(
    session: Session,
    queue: TaskQueue,
    settings: Settings,
    project_id: str,
    request: JobCreate,
    idempotency_key: IdempotencyKey | None = None,
) -> tuple[Job, int]:
    """Check the spec, store it resolved (defaults filled: what runs), queue the job, and send its train
    task once the row is committed. Returns the job and the status code to answer with."""
    record = idempotency.replayed(session, project_id, idempotency_key)
    job_id = new_id("job")
    # Claimed before any check or lock: a twin racing with this key waits for this commit, then replays it.
    record = record or idempotency.claim(session, project_id, idempotency_key, job_id, 201)
    if record is not None:
        return get_job(session, project_id, record.resource_id), record.status_code
    job = _admitted(session, settings, project_id, request, job_id, Submissions())
    _store_new(session, queue, settings, [job])
    attach(session, [*job.metadata_items, job])  # a caller may change it (a sweep's trial: its sweep's id)
    return job, 201


def create_jobs(
    session: Session, queue: TaskQueue, settings: Settings, requests: Sequence[tuple[str, JobCreate]]
) -> list[Job | ServiceError]:
    """Submissions without an Idempotency-Key, ``(project id, request)``, in ``session``'s one transaction,
    each checked as ``create_job`` checks one: a refused request is its error in the answer and the others go
    on. The admissions and the data sets are read once, the new rows inserted a table at a time, and each
    project's dispatch look runs once after the commit (``app.api.create_batches``: concurrent requests)."""
    reads = Submissions()
    made: list[Job | ServiceError] = []
    for project_id, request in requests:
        try:
            made.append(_admitted(session, settings, project_id, request, new_id("job"), reads))
        except ServiceError as error:
            made.append(error)
    _store_new(session, queue, settings, [job for job in made if isinstance(job, Job)])
    return made


def _admitted(
    session: Session, settings: Settings, project_id: str, request: JobCreate, job_id: str, reads: Submissions
) -> Job:
    """The new job's row, not yet added: its project has room for it and its spec passed every check."""
    integrations = _check_integrations(settings, request)
    admission = reads.admission(session, settings, project_id)
    admission.check()
    checked = check_spec(session, settings, project_id, request.spec, lock_dataset=True, known=reads.datasets)
    admission.admitted()
    now = utcnow()
    return Job(
        id=job_id,
        project_id=project_id,
        dataset_id=checked.dataset.id if checked.dataset else None,
        name=request.name,
        spec=checked.spec.model_dump(mode="json"),
        init_from=checked.init_from,
        integrations=integrations,
        status=JobStatus.QUEUED,
        attempt=0,
        max_attempts=settings.job_max_attempts,
        event_seq=1,  # its first event, written with it (job_state.record_created)
        epochs_completed=0,
        attempt_start_epoch=0,
        total_epochs=checked.spec.training.epochs,
        created_at=now,
        updated_at=now,
        metadata_items=[JobMetadata(job_id=job_id, key=k, value=v) for k, v in (request.metadata or {}).items()],
        artifacts=[],
    )


def _store_new(session: Session, queue: TaskQueue, settings: Settings, new: list[Job]) -> None:
    """Insert new jobs with their metadata, first events and webhook deliveries (a statement a table), and
    look for their projects' free slots once committed (a pass sends the train tasks if there are)."""
    if not new:
        return
    insert_all(session, new)  # the objects stay out of the session: the answers are made from them
    insert_all(session, [item for job in new for item in job.metadata_items])
    job_state.record_created(session, new)
    for project_id in dict.fromkeys(job.project_id for job in new):
        dispatch_after_commit(session, queue, settings, project_id)


def get_job(session: Session, project_id: str, job_id: str) -> Job:
    job = jobs.get(session, project_id, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", param="job_id")
    return job


def list_jobs(
    session: Session, project_id: str, filters: JobFilters, *, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    return jobs.page(session, project_id, filters, after=after, limit=limit)


def cancel_job(session: Session, project_id: str, job_id: str) -> Job:
    job = get_job(session, project_id, job_id)
    job_state.request_cancel(session, job.id)
    session.refresh(job)
    return job


def pause_job(session: Session, project_id: str, job_id: str) -> Job:
    job = get_job(session, project_id, job_id)
    job_state.request_pause(session, job.id)
    session.refresh(job)
    return job


def resume_job(session: Session, queue: TaskQueue, settings: Settings, project_id: str, job_id: str) -> Job:
    """A paused job back to the queue, waiting its turn like a new one: a dispatch pass sends its task once
    that commits if its project is under its running limit (else a finishing job's pass or the periodic
    sweep does, fairly). A repeated resume is a no-op."""
    job = get_job(session, project_id, job_id)
    if job_state.resume_job(session, job.id):
        dispatch_after_commit(session, queue, settings, project_id)
    session.refresh(job)
    return job


def list_events(
    session: Session, project_id: str, job_id: str, *, types: list[EventType], after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    job = get_job(session, project_id, job_id)
    return job_records.events_page(session, job.id, types=types, after=after, limit=limit)


def list_events_newest_first(
    session: Session, project_id: str, job_id: str, *, after_event: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    """Newest first, past the event ``after_event`` (an id): OpenAI's order for a job's events."""
    job = get_job(session, project_id, job_id)
    page = job_records.events_newest_first(session, job.id, before_event=after_event, limit=limit)
    if page is None:
        raise NotFound(f"no event {after_event} of job {job_id}", param="after")
    return page


def epoch_table(session: Session, project_id: str, job_id: str) -> list[EpochMetrics]:
    return job_records.epochs(session, get_job(session, project_id, job_id).id)


def list_checkpoints(
    session: Session, project_id: str, job_id: str, *, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    job = get_job(session, project_id, job_id)
    return job_records.checkpoints_page(session, job.id, after=after, limit=limit)


def list_artifacts(session: Session, project_id: str, job_id: str) -> list[Artifact]:
    return job_records.artifacts(session, get_job(session, project_id, job_id).id)


def read_confusion(session: Session, store: ArtifactStore, project_id: str, job_id: str) -> dict[str, Any]:
    """The confusion matrices a succeeded job published (``confusion.json``), as the engine wrote them."""
    job = get_job(session, project_id, job_id)
    artifact = job_records.artifact(session, job.id, artifacts.CONFUSION)
    if artifact is None:
        raise NotFound(f"job {job_id} has no confusion matrix: a job publishes one when it succeeds", param="job_id")
    with store.open(artifact.store_key) as file:
        record: dict[str, Any] = json.load(file)
    return record


# --- the dry run ----------------------------------------------------------------------------


def _dataset_counts(dataset: Dataset) -> tuple[list[int], bool]:
    """Images per class in an uploaded set's train/, in label order, and whether it has a val/ split."""
    counts = dataset.counts or {}
    train = counts.get("train", {})
    return [int(train[name]) for name in dataset.class_names or []], "val" in counts


def _train_counts(checked: CheckedSpec) -> tuple[list[int], bool]:
    """Images per class in train/, in label order, and whether the set has a val/ split."""
    if checked.dataset is not None:
        return _dataset_counts(checked.dataset)
    path = Path(checked.spec.data.path or "")
    if not path.is_dir():
        raise InvalidSpec(
            "a dry run reads the class counts of a folder; upload an archive as a data set instead",
            param="spec.data.path",
        )
    try:
        layout = scan_image_folder(path)
    except TrainingError as error:
        raise InvalidSpec(error.message, param="spec.data.path", code=error.code) from None
    per_class = [sum(r.label == label for r in layout.train) for label in range(len(layout.class_names))]
    return per_class, layout.val is not None


def dry_run_job(factory: sessionmaker[Session], settings: Settings, project_id: str, spec: Spec) -> DryRun:
    """The run planned without running it: resolved spec, parameter counts, steps, the lr of every group at
    the steps it shows. Stores nothing. The checks read the database in a short transaction; the plan
    (torch, on the meta device) runs after it, holding no lock, and gives up past the dry-run time limit."""
    with short_transaction(factory) as session:
        checked = check_spec(session, settings, project_id, spec)
    train_counts, has_val = _train_counts(checked)
    check_planned_steps(settings, checked.spec, train_counts, has_val)
    from training.dryrun import Deadline, DryRunTimeout, dry_run  # torch: on the first dry run, not at startup

    deadline = Deadline.after(settings.dry_run_timeout_seconds)  # the plan's own time, torch's import apart
    try:
        plan = dry_run(checked.spec, train_counts=train_counts, has_val=has_val, deadline=deadline)
    except DryRunTimeout as error:
        raise ServiceUnavailable(f"{error.message} (FT_DRY_RUN_TIMEOUT_SECONDS)", code=error.code) from None
    except TrainingError as error:
        raise InvalidSpec(error.message, code=error.code) from None
    return DryRun.model_validate(plan.to_dict())
