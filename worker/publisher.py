"""Publishing a running job's record off the training thread: events, epoch rows, checkpoints.

The engine's callbacks only put items on a queue; this thread writes them, in order, to the database
(each in a short transaction, mirrored to the job's Redis stream after its commit) and uploads
checkpoints to the artifact store. The training loop never waits on the database or the store; the
runner drains the queue before it finishes or releases the job. Through a database outage the items wait
here, in order, and are written once it answers again (up to ``db_outage_grace_seconds``); the runner's
own last writes (artifacts, the job's end) are retried the same way (``through_outage``).

Fencing: every write carries the attempt (``Fence``): its store keys name the attempt, so no two attempts
ever write or delete the same object, and each database write first locks the job's row and checks that
the attempt still owns it (``app.repositories.attempts.fence``), in the transaction that records it. A
checkpoint is uploaded first and registered after, fenced: when the registration is refused its upload
(under this attempt's own key) is deleted again. A checkpoint the retention rule removed is marked deleted
first, fenced, and only then deleted from the store: a stale attempt deletes nothing.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.context import Runtime
from app.db.session import transaction
from app.errors import LeaseLost
from app.repositories import attempts
from app.repositories import job_records as record_rows
from app.services.job_records import (
    append_event,
    mark_checkpoint_deleted,
    record_epoch_metrics,
    record_step_metrics,
    register_checkpoint,
)
from app.settings import Settings
from app.statuses import EventType
from app.stores import keys
from training.callbacks import CheckpointInfo
from worker.holds import hold
from worker.timings import AttemptTimings
from worker.tracking import MlflowTracker

log = logging.getLogger(__name__)

# A failed write is retried after these delays, then every last one, until the database has been out for
# the settings' db_outage_grace_seconds; the items behind it wait in the queue, in order (the buffer).
RETRY_SECONDS = (0.2, 1.0, 2.0, 5.0)

T = TypeVar("T")


def through_outage(settings: Settings, job_id: str, what: str, write: Callable[[], T]) -> T:
    """``write()``, retried while the database (or the store) fails, until it has failed for the settings'
    ``db_outage_grace_seconds``; then its last error is raised. ``write`` must be one whole, fenced
    transaction, safe to run again: a LeaseLost (the attempt no longer owns the job) is never retried."""
    first_failure: float | None = None
    for attempt in itertools.count():
        try:
            return write()
        except (SQLAlchemyError, OSError):
            now = time.monotonic()
            first_failure = first_failure if first_failure is not None else now
            if now - first_failure > settings.db_outage_grace_seconds:
                raise
            if attempt < len(RETRY_SECONDS) or attempt % 12 == 0:  # a line a minute while it lasts
                log.warning("job %s: %s failed; retrying", job_id, what)
            time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Fence:
    """The attempt a worker runs, as it proves it: the job, the owner token of its claim, the attempt's number."""

    job_id: str
    owner: str
    attempt: int

    @property
    def prefix(self) -> str:
        """Where the attempt's objects go: its number and its claim's nonce (a preempted attempt hands its
        number back, and the next claim reuses it), so no two claims share a key."""
        return keys.attempt_prefix(self.job_id, self.attempt, self.owner.rsplit(":", 1)[-1])

    def check(self, session: Session) -> None:
        """Lock the job's row and raise LeaseLost unless this attempt still owns it."""
        if attempts.fence(session, self.job_id, self.owner, self.attempt) is None:
            raise LeaseLost(f"job {self.job_id} is no longer owned by attempt {self.attempt} ({self.owner})")


def checkpoint_key(fence: Fence, name: str) -> str:
    return keys.attempt_checkpoint_key(fence.prefix, name)


@dataclass(frozen=True)
class Step:
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Epoch:
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Note:
    type: EventType
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    info: CheckpointInfo
    staged: Path  # a hard link the engine's retention cannot delete under the upload


Item = Step | Epoch | Note | Checkpoint


class EventPublisher(threading.Thread):
    def __init__(self, services: Runtime, fence: Fence, on_lease_lost: Callable[[], None]) -> None:
        super().__init__(name=f"publisher-{fence.job_id}", daemon=True)
        self.services = services
        self.fence = fence
        self.job_id = fence.job_id
        self.owner = fence.owner
        self.on_lease_lost = on_lease_lost
        self.items: queue.Queue[Item | None] = queue.Queue()
        self.lease_lost = False
        self.tracker: MlflowTracker | None = None  # set by the runner when the job is tracked in MLflow
        self.timings = AttemptTimings()  # the runner's, once it has one: what the writes cost

    def put(self, item: Item) -> None:
        self.items.put(item)

    def drain(self) -> None:
        """Wait until every item put so far is written."""
        self.items.join()

    def close(self) -> None:
        self.items.put(None)
        self.join(timeout=60)

    def run(self) -> None:
        while True:
            item = self.items.get()
            try:
                if item is None:
                    return
                if not self.lease_lost:
                    self._with_retries(item)
            finally:
                self.items.task_done()

    def _with_retries(self, item: Item) -> None:
        try:
            through_outage(
                self.services.settings, self.job_id, f"recording {type(item).__name__}", lambda: self._write(item)
            )
        except LeaseLost:
            self.lease_lost = True
            self.on_lease_lost()
        except (SQLAlchemyError, OSError):
            log.exception("job %s: giving up on recording %s", self.job_id, type(item).__name__)

    def _write(self, item: Item) -> None:
        factory, owner = self.services.factory, self.owner
        if isinstance(item, Checkpoint):
            self._upload(item)
            return
        started = time.monotonic()
        with transaction(factory) as session:
            self.fence.check(session)
            if isinstance(item, Step):
                record_step_metrics(session, self.job_id, item.metrics, owner=owner)
            elif isinstance(item, Epoch):
                record_epoch_metrics(session, self.job_id, item.metrics, owner=owner)
            else:
                append_event(session, self.job_id, item.type, item.data, item.message)
        self.timings.count("event_writes", seconds=time.monotonic() - started)
        if isinstance(item, Epoch) and self.tracker is not None:
            self.warn_if(self.tracker.log_epoch(item.metrics))

    def warn_if(self, problem: str | None) -> None:
        """A tracking problem becomes a warning event on the job; it never fails it."""
        if problem is None:
            return
        try:
            with transaction(self.services.factory) as session:
                self.fence.check(session)
                append_event(session, self.job_id, EventType.WARNING, {"integration": "mlflow"}, problem)
        except (SQLAlchemyError, LeaseLost):
            log.warning("job %s: could not record the warning %r", self.job_id, problem)

    def _upload(self, item: Checkpoint) -> None:
        info, store = item.info, self.services.store
        key = checkpoint_key(self.fence, info.path.name)
        started = time.monotonic()
        stored = store.put_file(key, item.staged)  # on the store's filesystem: a link, not a copy
        self.timings.count("checkpoint_uploads", seconds=time.monotonic() - started)
        self.timings.count("checkpoint_upload_bytes", stored.size)
        hold("checkpoint_write")  # tests only: a pause lands between the upload and its registration
        started = time.monotonic()
        try:
            with transaction(self.services.factory) as session:
                self.fence.check(session)
                self._register(session, info, stored)
            self.timings.count("checkpoint_registrations", seconds=time.monotonic() - started)
        except LeaseLost:
            store.delete(key)  # this attempt's own key: no other attempt's object is touched
            raise
        item.staged.unlink(missing_ok=True)
        for removed in info.removed:  # the engine's retention deleted these locally: follow suit
            hold("retention")  # tests only: a pause lands inside the retention step
            with transaction(self.services.factory) as session:
                self.fence.check(session)
                keys = [
                    checkpoint.store_key
                    for checkpoint in record_rows.kept_checkpoints(session, self.job_id)
                    if Path(checkpoint.store_key).name == removed.name
                ]
                for key in keys:
                    mark_checkpoint_deleted(session, self.job_id, key, owner=self.owner)
            for key in keys:  # marked deleted (committed) first: no attempt resumes from it any more
                store.delete(key)

    def _register(self, session: Session, info: CheckpointInfo, stored: Any) -> None:
        register_checkpoint(
            session,
            self.job_id,
            stored,
            epoch=info.epoch,
            step=info.step,
            is_best=info.is_best,
            mid_epoch=info.mid_epoch,
            metrics=info.metrics or None,
            owner=self.owner,
        )
