"""The events a webhook endpoint subscribes to: one per status a job can enter that a client acts on.

New statuses join ``JOB_EVENTS`` (as ``pruned`` did with sweeps) and are sent from the same hook on the state machine.
"""

from __future__ import annotations

from typing import Literal, get_args

from app.statuses import JobStatus

EventName = Literal[
    "job.queued", "job.running", "job.paused", "job.succeeded", "job.failed", "job.cancelled", "job.pruned"
]
JOB_EVENTS: tuple[str, ...] = get_args(EventName)  # the API's schema validates against the same names


def event_for_status(status: JobStatus) -> str | None:
    """The webhook event of a job entering ``status`` (None for ``cancelling``: the cancel is not done yet)."""
    name = f"job.{status}"
    return name if name in JOB_EVENTS else None
