"""One attempt at a job, in a worker's pool child: claim it, train it, record how it ended.

    claim (queued -> running, with an owner token and a lease)
      -> fetch its inputs (the data set, init_from weights, the last checkpoint of an earlier attempt)
      -> run the engine with callbacks that publish off the training thread and a should-stop probe
      -> succeeded (artifacts published) | cancelled | failed (a code and a one-line message)
         | requeued (SIGTERM: checkpointed, handed back for another worker)
         | pruned (a sweep's trial that its sweep's pruner stopped at an epoch end)
      -> a sweep's trial that ended advances its sweep (queues the next trials)
      -> a job that left its project's running slot (ended, or paused) runs a dispatch pass for the project

The last writes (the artifacts' registration, the job's end, a failure, a release) are retried through a
database outage, as the publisher's items are, up to ``db_outage_grace_seconds``, each in one transaction
fenced by the attempt.

A job another live worker owns, or one already finished, is left alone: a redelivered message is a
no-op. A worker that loses its lease stops without writing anything more: every write of the attempt is
fenced by its ``Fence`` (worker.publisher), its store keys name the attempt, and its working folder
(``work/<job>/attempt-<n>-<nonce>``) is its own. The folder goes when the attempt ends (succeeded, failed,
cancelled or lost); the store keeps what was registered.

A resume starts from the newest registered checkpoint whose bytes hash to the sha256 recorded for it; one
that does not (or is missing) is passed over with a warning, for the one before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.context import Runtime
from app.db.models import Job
from app.db.session import transaction
from app.dispatch.admission import dispatch_waiting, queue_for_training
from app.errors import LeaseLost
from app.observability.logs import job_context, start_in_context
from app.repositories import attempts as attempt_rows
from app.repositories import datasets as dataset_rows
from app.repositories import job_records as record_rows
from app.repositories import jobs as job_rows
from app.services.job_records import append_event, register_artifact
from app.services.job_state import JobError, claim_job, finish_job, release_job, requeue_lost_attempt
from app.statuses import EventType, JobStatus
from app.store import ArtifactStore, ObjectMissing, StoredObject
from app.stores import cache_for, keys
from app.stores.cache import FetchCache
from app.sweeps.pruning import TrialOfSweep, TrialReporter, trial_of
from training import artifacts
from training.callbacks import Callbacks, CheckpointInfo, RollbackInfo, RunInfo, StepMetrics, Stop
from training.spec import Spec
from worker.datasets import extracted_dataset
from worker.lease import LeaseKeeper
from worker.publisher import Checkpoint, Epoch, EventPublisher, Fence, Note, Step, through_outage
from worker.timings import AttemptTimings
from worker.tracking import MlflowTracker, tracker_for

log = logging.getLogger(__name__)

T = TypeVar("T")


def import_engine() -> None:
    """Import torch, torchvision and the engine (seconds of CPU): in a training worker's pool child while it
    waits for its job (``worker.tasks.warm_up``), else at the job's start. Touches no device: the job's GPUs
    are chosen later (``CUDA_VISIBLE_DEVICES``, read when CUDA starts)."""
    import torch  # noqa: F401

    import training.distributed
    import training.engine  # noqa: F401


def new_owner(worker_name: str | None = None) -> str:
    """A token that names this attempt: the worker (its Celery node name, else the host), the process, a nonce."""
    return f"{(worker_name or socket.gethostname())[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobCallbacks(Callbacks):
    """The engine's hooks for a service job: each only puts an item on the publisher's queue."""

    def __init__(self, publisher: EventPublisher, keeper: LeaseKeeper, preempt: threading.Event, staging: Path) -> None:
        self.publisher = publisher
        self.keeper = keeper
        self.preempt = preempt
        self.staging = staging
        self.pruning: TrialReporter | None = None  # a sweep's trial with early stopping
        self.pruned_at: int | None = None  # the epoch after which its pruner stopped it
        self.pruned_objective: float | None = None

    def on_start(self, info: RunInfo) -> None:
        data = info.to_dict()
        data.pop("class_names")
        message = (
            f"training on {info.device} ({info.precision}): {info.images.get('train', 0)} train images, "
            f"{info.steps_per_epoch} steps per epoch, from epoch {info.start_epoch + 1} of {info.epochs}"
        )
        self.publisher.put(Note(EventType.INFO, message, data))
        for note in info.notes:
            self.publisher.put(Note(EventType.INFO, note, {}))

    def on_step(self, metrics: StepMetrics) -> None:
        self.publisher.put(Step(metrics.to_dict()))

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.publisher.put(Epoch(metrics))
        if self.pruning is not None:
            self.pruning.report(metrics)  # on the reporter's thread: the next step's should_stop takes the answer

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        staged = self.staging / info.path.name
        staged.unlink(missing_ok=True)
        try:
            os.link(info.path, staged)  # instant, and safe from the engine's retention
        except OSError:
            shutil.copyfile(info.path, staged)
        self.publisher.put(Checkpoint(info, staged))

    def on_rollback(self, info: RollbackInfo) -> None:
        message = (
            f"divergence guard: {info.reason.replace('_', '-')} loss {info.loss:.4g} at step {info.step}; "
            f"rolled back to step {info.back_to_step}, lr now {info.lr:.3g} (rollback {info.rollback})"
        )
        self.publisher.put(Note(EventType.WARNING, message, {"rollback": info.to_dict()}))

    def should_stop(self) -> Stop | None:
        verdict = self.pruning.answer() if self.pruning is not None else None
        if verdict is not None and self.pruned_at is None:
            self.pruned_at, self.pruned_objective = verdict.epoch, verdict.objective
        if self.pruned_at is not None:
            return Stop.CANCEL  # the cancel path: stop now, no checkpoint; the job ends pruned
        if self.preempt.is_set() or self.keeper.stop_reason == "pause":
            return Stop.PREEMPT  # checkpoint, then hand the job back (queued, or paused)
        if self.keeper.stop_reason is not None:
            return Stop.CANCEL
        return None


@dataclass
class Inputs:
    spec: Spec
    data: Path
    init_from: Path | None
    resume_from: Path | None
    tracker: MlflowTracker | None = None
    warnings: tuple[str, ...] = ()
    sweep_trial: TrialOfSweep | None = None


@dataclass(frozen=True)
class Registered:
    """A registered checkpoint a resume may start from."""

    stored: StoredObject
    step: int
    is_best: bool


def fetch(store: ArtifactStore, key: str, dest: Path) -> str:
    """A local copy of a stored object at ``dest``; the sha256 of its bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    digest = hashlib.sha256()
    with store.open(key) as source, tmp.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    tmp.replace(dest)
    return digest.hexdigest()


def fetch_cached(cache: FetchCache, store: ArtifactStore, stored: StoredObject, dest: Path) -> Path:
    """A stored object by way of this host's cache (fetched once per host, sha256-checked), linked to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with cache.use(store, stored.key, stored.sha256) as cached:
        dest.unlink(missing_ok=True)
        try:
            os.link(cached, dest)  # instant; stays whole when the cache evicts its entry
        except OSError:
            shutil.copyfile(cached, dest)
    return dest


class JobRunner:
    def __init__(
        self, services: Runtime, job_id: str, preempt: threading.Event, worker_name: str | None = None
    ) -> None:
        self.services = services
        self.job_id = job_id
        self.preempt = preempt
        self.owner = new_owner(worker_name)
        self.run_dir = services.settings.work_path / job_id  # the attempt's own folder, once claimed
        self.tracker: MlflowTracker | None = None
        self.holds = contextlib.ExitStack()
        self.sweep_id: str | None = None
        self.timings = AttemptTimings()  # recorded with the job's end (worker.timings)

    def run(self) -> str:
        with job_context(self.job_id):  # every log record of the attempt names the job, its threads' too
            return self._claim_and_attempt()

    def _claim_and_attempt(self) -> str:
        with self.timings.phase("claim"), transaction(self.services.factory) as session:
            claimed = claim_job(session, self.job_id, self.owner, self.services.settings.lease_seconds)
            attempt = attempt_rows.attempt_of(session, self.job_id, self.owner) if claimed else None
        if attempt is None:
            log.info("job %s is not claimable (taken, finished or gone): nothing to do", self.job_id)
            return "not claimed"
        self.fence = Fence(self.job_id, self.owner, attempt)
        self.run_dir = self.services.settings.work_path / self.job_id / self.fence.prefix.rsplit("/", 1)[-1]
        keeper = LeaseKeeper(self.services.factory, self.job_id, self.owner, attempt, self.services.settings)
        publisher = EventPublisher(self.services, self.fence, on_lease_lost=keeper.lose)
        publisher.timings = self.timings
        self.keeper = keeper
        start_in_context(keeper)
        start_in_context(publisher)
        try:
            with self.holds:  # the data set's extraction, in use (its cache does not evict it meanwhile)
                return self._attempt(keeper, publisher)
        finally:
            publisher.close()
            keeper.stop()
            # Whatever the ending, the attempt's folder goes: what is kept is in the store (a released or
            # lost attempt's successor resumes from there), and a lost attempt's work is void anyway.
            self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.run_dir.parent.rmdir()  # the job's folder, once no attempt on this host has one left

    def _attempt(self, keeper: LeaseKeeper, publisher: EventPublisher) -> str:
        with self.timings.phase("imports"):  # nothing left to import in a warmed-up pool child (worker.tasks)
            import_engine()  # else the pool child's first torch import: after the claim, so it does not delay it
            import torch

            from training.distributed import RanksLost, fit_on_devices
            from training.errors import TrainingError

        callbacks = JobCallbacks(publisher, keeper, self.preempt, self.run_dir / "staging")
        try:
            with self.timings.phase("inputs"):
                inputs = self._inputs()
            publisher.tracker = self.tracker = inputs.tracker
            for warning in inputs.warnings:
                log.warning("job %s: %s", self.job_id, warning)
                publisher.put(Note(EventType.WARNING, warning, {}))
            if inputs.sweep_trial is not None:
                callbacks.pruning = TrialReporter.open(self.services.settings, inputs.sweep_trial)
            # training.devices processes: this one, or ranks under torch's elastic launcher (training.distributed)
            try:
                engine_started = time.monotonic()
                result = fit_on_devices(
                    inputs.spec,
                    self.run_dir,
                    data_path=inputs.data,
                    init_from=inputs.init_from,
                    callbacks=callbacks,
                    settings=self.services.settings.engine,
                    resume_from=inputs.resume_from,
                )
            finally:
                self.timings.add_phase("engine", time.monotonic() - engine_started)
                if callbacks.pruning is not None:
                    callbacks.pruning.close()  # the last epoch's report reaches the study before the job ends
        except RanksLost as error:
            return self._lose_attempt(publisher, keeper, str(error))
        except TrainingError as error:
            return self._fail(publisher, keeper, error.code, error.message)
        except torch.cuda.OutOfMemoryError:
            message = "out of GPU memory: lower data.batch_size (and raise training.grad_accum_steps)"
            return self._fail(publisher, keeper, "out_of_memory", message)
        except Exception as error:  # the job fails with a code; the traceback goes to an error event
            from celery.exceptions import SoftTimeLimitExceeded  # type: ignore[import-untyped]

            if isinstance(error, SoftTimeLimitExceeded):
                return self._fail(
                    publisher, keeper, "timeout", "the job ran past its time limit (training.max_runtime)"
                )
            first_line = (str(error).splitlines() or [""])[0][:300]
            return self._fail(publisher, keeper, "internal", f"internal error: {type(error).__name__}: {first_line}")
        with self.timings.phase("drain"):  # the events and checkpoint uploads still queued when the engine ended
            publisher.drain()
        if keeper.stop_reason == "lost" or publisher.lease_lost:
            log.warning("job %s: lease lost; another worker has it now", self.job_id)
            return "lease lost"
        if result.status == "preempted":
            return self._release()
        if result.status == "cancelled" and callbacks.pruned_at is not None and keeper.stop_reason != "cancel":
            self._end_tracking(publisher, "cancelled")
            note = {"epoch": callbacks.pruned_at, "objective": callbacks.pruned_objective}
            return self._finish(JobStatus.PRUNED, note=note)
        if result.status == "cancelled":
            self._end_tracking(publisher, "cancelled")
            return self._finish(JobStatus.CANCELLED)
        try:
            with self.timings.phase("artifacts"):
                self._publish_artifacts(result.checkpoint_path)
        except LeaseLost:
            log.warning("job %s: lease lost before its artifacts were registered; nothing kept", self.job_id)
            return "lease lost"
        with self.timings.phase("tracking"):
            published_files = [self.run_dir / artifacts.CARD, self.run_dir / artifacts.WEIGHTS]
            self._end_tracking(publisher, "succeeded", published_files)
        published = {"published": self._published_metrics()}
        return self._finish(JobStatus.SUCCEEDED, final_metrics=published["published"], test_metrics=result.test)

    # --- inputs ------------------------------------------------------------------------------

    def _inputs(self) -> Inputs:
        services = self.services
        with transaction(services.factory) as session:
            job = job_rows.get_any(session, self.job_id)
            assert job is not None
            spec = Spec.model_validate(job.spec)
            dataset = dataset_rows.get_any(session, job.dataset_id) if job.dataset_id else None
            registered = [
                Registered(StoredObject(row.store_key, row.bytes or 0, row.sha256 or ""), row.step, row.is_best)
                for row in reversed(record_rows.kept_checkpoints(session, self.job_id))
            ]
            init_keys = self._init_keys(session, job)
            tracker = tracker_for(services.settings.mlflow_tracking_uri, job.id, job.integrations, job.spec, job.name)
            sweep_trial = trial_of(session, job)
            self.sweep_id = job.sweep_id
        if dataset is None:
            from training.errors import DatasetError

            raise DatasetError("dataset_unreadable", [f"data set {job.dataset_id} is gone; upload it again"])
        data = self.holds.enter_context(extracted_dataset(services.store, services.settings, dataset))
        init_from = None
        cache = cache_for(services.settings)
        for stored, name in init_keys:
            fetched = fetch_cached(cache, services.store, stored, self.run_dir / "init" / name)
            init_from = init_from or fetched  # the first is the weights; a model card may follow
        resume_from, warnings = self._resume_point(registered)
        return Inputs(spec, data, init_from, resume_from, tracker, tuple(warnings), sweep_trial)

    def _resume_point(self, registered: list[Registered]) -> tuple[Path | None, list[str]]:
        """The newest registered checkpoint whose bytes match its recorded sha256, fetched into this
        attempt's folder (with the best one before it, which the engine reloads at the end); the ones
        passed over, as warnings."""
        warnings: list[str] = []
        for index, checkpoint in enumerate(registered):
            dest = self._fetch_checked(checkpoint.stored, warnings)
            if dest is None:
                continue
            best = next((older for older in registered[index:] if older.is_best), None)
            if best is not None and best is not checkpoint:
                self._fetch_checked(best.stored, warnings)
            return dest, warnings
        return None, warnings

    def _fetch_checked(self, stored: StoredObject, warnings: list[str]) -> Path | None:
        dest = self.run_dir / "checkpoints" / Path(stored.key).name
        try:
            digest = fetch(self.services.store, stored.key, dest)
        except ObjectMissing:
            warnings.append(f"checkpoint {stored.key} is missing from the store: resuming from an earlier one")
            return None
        if digest == stored.sha256:
            return dest
        dest.unlink(missing_ok=True)
        warnings.append(
            f"checkpoint {stored.key} does not match its recorded sha256 ({digest[:12]}, recorded "
            f"{stored.sha256[:12]}): resuming from an earlier one"
        )
        return None

    def _init_keys(self, session: Any, job: Job) -> list[tuple[StoredObject, str]]:
        """Stored objects of the weights ``init_from`` names: an earlier job's (with its card), or a checkpoint."""
        if job.init_from is None:
            return []
        if job.init_from.startswith("ckpt_"):
            checkpoint = record_rows.checkpoint(session, job.project_id, job.init_from)
            if checkpoint is None or checkpoint.deleted_at is not None:
                raise _input_error(f"backbone.init_from: checkpoint {job.init_from} is no longer available")
            stored = StoredObject(checkpoint.store_key, checkpoint.bytes or 0, checkpoint.sha256 or "")
            return [(stored, Path(checkpoint.store_key).name)]
        keys = []
        for name in (artifacts.WEIGHTS, artifacts.CARD):
            artifact = record_rows.artifact(session, job.init_from, name)
            if artifact is not None:
                keys.append((StoredObject(artifact.store_key, artifact.bytes, artifact.sha256), name))
        if not keys or keys[0][1] != artifacts.WEIGHTS:
            raise _input_error(f"backbone.init_from: job {job.init_from} has no published weights")
        return keys

    # --- endings -----------------------------------------------------------------------------

    def _publish_artifacts(self, last_checkpoint: Path | None) -> None:
        """Upload the artifacts under this attempt's keys, then register them in one fenced transaction; a
        refused registration (the job was taken) deletes the uploads again (LeaseLost)."""
        store = self.services.store
        uploaded = []
        for name in artifacts.PUBLISHED:  # the run's files are written once (by rename): a link is safe
            key = keys.attempt_artifact_key(self.fence.prefix, name)
            uploaded.append((name, store.put_file(key, self.run_dir / name)))
        try:
            through_outage(
                self.services.settings,
                self.job_id,
                "registering its artifacts",
                lambda: self._register_artifacts(uploaded),
            )
        except LeaseLost:
            for _, stored in uploaded:
                store.delete(stored.key)
            raise

    def _register_artifacts(self, uploaded: list[tuple[str, StoredObject]]) -> None:
        store = self.services.store
        with transaction(self.services.factory) as session:
            self.fence.check(session)
            for name, stored in uploaded:
                register_artifact(session, self.job_id, name, stored, owner=self.owner)
            for checkpoint in record_rows.kept_checkpoints(session, self.job_id):
                stat = store.stat(checkpoint.store_key)
                if stat is not None and checkpoint.sha256 is not None:
                    stored = StoredObject(checkpoint.store_key, checkpoint.bytes or stat.size, checkpoint.sha256)
                    register_artifact(session, self.job_id, Path(checkpoint.store_key).name, stored, owner=self.owner)

    def _published_metrics(self) -> dict[str, Any]:
        import json

        card = json.loads((self.run_dir / artifacts.CARD).read_text())
        published: dict[str, Any] = card["metrics"]["published"]
        return published

    def _end_tracking(self, publisher: EventPublisher, status: str, artifacts: list[Path] | None = None) -> None:
        """The MLflow run's end (after the publisher drained): pending epochs, artifacts, its status."""
        if self.tracker is not None:
            publisher.warn_if(self.tracker.finish(status, artifacts or []))

    def _finish(self, status: JobStatus, **results: Any) -> str:
        started = time.monotonic()
        self.keeper.stop()  # the job is about to leave running: nothing left to watch

        def finish(session: Session) -> bool:
            self._record_timings(session)
            return finish_job(session, self.job_id, self.owner, status, **results)

        finished = self._last_write(f"recording the job {status}", finish, ended_as=status)
        self.timings.add_phase("finish", time.monotonic() - started)
        log.info("job %s: attempt timings: %s", self.job_id, self.timings.summary())
        if finished:
            self._advance_sweep()
            self._dispatch_freed_slot()
        return str(status) if finished else "lease lost"

    def _record_timings(self, session: Session) -> None:
        """The attempt's phases so far (its last write excluded: it is this one), as an info event."""
        timings = self.timings.to_dict()
        message = f"attempt timings: {self.timings.summary()}"
        append_event(session, self.job_id, EventType.INFO, {"timings": timings}, message)

    def _last_write(self, what: str, write: Callable[[Session], T], *, ended_as: JobStatus | None = None) -> T | None:
        """One of the attempt's last writes (its end): ``write`` in one transaction, fenced by the attempt,
        retried through a database outage as the publisher's items are (up to ``db_outage_grace_seconds``;
        past it the error is raised, and the reaper requeues the job once its lease has run out). None when
        the attempt no longer owns the job. A retry after a commit whose answer the outage swallowed finds
        the job already ``ended_as`` by this attempt: that write is done, and counts as True."""
        tries = 0

        def once() -> T | None:
            nonlocal tries
            tries += 1
            with transaction(self.services.factory) as session:
                if tries > 1 and ended_as is not None and self._ended_as(session, ended_as):
                    return cast(T, True)
                self.fence.check(session)
                return write(session)

        try:
            return through_outage(self.services.settings, self.job_id, what, once)
        except LeaseLost:
            return None

    def _ended_as(self, session: Session, status: JobStatus) -> bool:
        job = job_rows.get_any(session, self.job_id)
        return job is not None and (job.status, job.owner, job.attempt) == (status, self.owner, self.fence.attempt)

    def _dispatch_freed_slot(self) -> None:
        """The job left its project's running slot: a dispatch pass for that project now sends its next
        waiting job (fairly, under its limits) rather than at the API's next periodic sweep, which still
        catches whatever this misses."""
        try:
            with transaction(self.services.factory) as session:
                project_id = session.scalar(select(Job.project_id).where(Job.id == self.job_id))
            if project_id is not None:
                services = self.services
                dispatch_waiting(services.factory, services.queue, services.settings, project_id=project_id)
        except Exception:
            log.warning("job %s: no dispatch pass after it ended; the periodic sweep will", self.job_id, exc_info=True)

    def _advance_sweep(self) -> None:
        """A sweep's trial ended: queue the sweep's next trials now (the API's periodic sweep retries this)."""
        if self.sweep_id is None:
            return
        from app.sweeps.service import advance

        try:
            advance(self.services, self.sweep_id)
        except Exception:
            log.warning("sweep %s: could not advance it; the periodic sweep will", self.sweep_id, exc_info=True)

    def _release(self) -> str:
        """Back to queued (a SIGTERM) or to paused (a pause), checkpointed. A requeued job's task is not sent
        from here: this worker is shutting down and could take it back; the API's sweep sends it once the job
        has waited ``redispatch_after_seconds``. A paused job waits for ``resume``, which queues it for a dispatch
        pass; its slot (and a cancelled job's) goes to the project's next waiting job at once."""
        self.keeper.stop()
        after = self._last_write(
            "releasing the job",
            lambda session: release_job(session, self.job_id, self.owner, reason="worker shutting down: checkpointed"),
        )
        if after in (JobStatus.PAUSED, JobStatus.CANCELLED):  # its slot is free (a requeued job keeps it)
            self._dispatch_freed_slot()
        return f"released ({after})" if after is not None else "lease lost"

    def _lose_attempt(self, publisher: EventPublisher, keeper: LeaseKeeper, reason: str) -> str:
        """A rank died: the attempt ends as a lost worker's does, and the job resumes from its last checkpoint
        (sent again at once: this worker lives and may take it)."""
        log.warning("job %s: %s", self.job_id, reason)
        publisher.drain()
        if keeper.stop_reason == "lost" or publisher.lease_lost:
            return "lease lost"
        keeper.stop()

        def requeue(session: Session) -> JobStatus | None:
            after = requeue_lost_attempt(session, self.job_id, self.owner, f"a training process died ({reason})")
            if after == JobStatus.QUEUED:
                queue_for_training(session, self.services.queue, self.job_id)
            return after

        after = self._last_write("requeueing the job", requeue)
        if after is None:
            return "lease lost"
        if after != JobStatus.QUEUED:  # it ended (failed worker_lost, or cancelled): its slot is free
            self._dispatch_freed_slot()
        return f"rank lost ({after})"

    def _fail(self, publisher: EventPublisher, keeper: LeaseKeeper, code: str, message: str) -> str:
        log.error("job %s failed (%s): %s", self.job_id, code, message)
        publisher.drain()
        if keeper.stop_reason == "lost" or publisher.lease_lost:
            return "lease lost"
        keeper.stop()
        self._end_tracking(publisher, "failed")
        data = {"code": code, "traceback": traceback.format_exc()}

        def fail(session: Session) -> bool:
            append_event(session, self.job_id, EventType.ERROR, data, message)
            return finish_job(session, self.job_id, self.owner, JobStatus.FAILED, JobError(code, message))

        finished = self._last_write(f"recording the job failed ({code})", fail, ended_as=JobStatus.FAILED)
        if finished:
            self._advance_sweep()
            self._dispatch_freed_slot()
        return f"failed ({code})" if finished else "lease lost"


def _input_error(message: str) -> Exception:
    from training.errors import InitFromError

    return InitFromError(message)


def run_job(services: Runtime, job_id: str, preempt: threading.Event, worker_name: str | None = None) -> str:
    """The ``finetune.train_job`` task's body. Returns how the attempt ended, for the worker's log."""
    return JobRunner(services, job_id, preempt, worker_name).run()


__all__ = ["JobRunner", "run_job"]
