"""The vocabularies the database, the API and the worker share: job and data set statuses, event types."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PAUSING = "pausing"  # a pause was asked: the worker checkpoints at the next step
    PAUSED = "paused"  # held, off any worker, until resumed
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a sweep's trial its pruner stopped early (at the epoch in its status event)

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED})
ACTIVE_JOB_STATUSES = frozenset(set(JobStatus) - TERMINAL_JOB_STATUSES)
# A worker holds the job (an owner and a lease) and trains it until its next step at least.
OWNED_JOB_STATUSES = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING})


class DatasetStatus(enum.StrEnum):
    VALIDATING = "validating"
    READY = "ready"
    FAILED = "failed"


class SweepStatus(enum.StrEnum):
    RUNNING = "running"  # trials are queued or running, or more are to come
    SUCCEEDED = "succeeded"  # every trial it was to run has ended
    CANCELLED = "cancelled"


class ExportStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventType(enum.StrEnum):
    STATUS = "status"  # a state machine transition
    EPOCH = "epoch"  # an epoch's metrics
    STEP = "step"  # step metrics (the worker may keep these in the Redis stream only)
    CHECKPOINT = "checkpoint"
    ARTIFACT = "artifact"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
