"""The running job's lease, kept alive from a thread beside the training loop.

Every ``cancel_poll_seconds`` the keeper reads the job's status (a cancel stops the run within about that
long); every ``lease_renew_seconds`` it renews the lease. It never stops the run itself: it raises a flag
that the engine's should-stop probe reads between steps.

A worker paused past its lease (SIGSTOP, a frozen VM) finds on waking, at its next look, that the job
has another owner or attempt, and raises ``lost``: training stops at the next step, well within one
lease period, and the publisher's fenced writes refuse whatever the stale attempt still had queued.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import transaction
from app.repositories import attempts
from app.services.job_state import renew_lease
from app.settings import Settings
from app.statuses import OWNED_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

StopReason = Literal["cancel", "pause", "lost"]
REASONS: dict[StopReason, str] = {"cancel": "cancel requested", "pause": "pause requested", "lost": "lease lost"}


class LeaseKeeper(threading.Thread):
    def __init__(
        self, factory: sessionmaker[Session], job_id: str, owner: str, attempt: int, settings: Settings
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.settings = settings
        self.stop_reason: StopReason | None = None
        self._done = threading.Event()

    def run(self) -> None:
        settings = self.settings
        next_renewal = time.monotonic() + settings.lease_renew_seconds
        last_renewed = time.monotonic()
        last_warned = float("-inf")
        while not self._done.wait(settings.cancel_poll_seconds) and self.stop_reason != "lost":
            try:
                if time.monotonic() >= next_renewal:
                    with transaction(self.factory) as session:
                        renewed = renew_lease(session, self.job_id, self.owner, settings.lease_seconds)
                    last_renewed = time.monotonic()
                    next_renewal = last_renewed + settings.lease_renew_seconds
                    if not renewed:
                        self._look()
                else:
                    self._look()
            except SQLAlchemyError:
                if time.monotonic() - last_warned > 30:  # one line at the start of an outage, then every 30 s
                    log.warning("job %s: the database did not answer the lease keeper", self.job_id, exc_info=True)
                    last_warned = time.monotonic()
                # Through a database outage shorter than the grace, training goes on and the lease is retried
                # (the reaper holds off for a lease period after PostgreSQL returns); past it, stop.
                if time.monotonic() - last_renewed > max(settings.lease_seconds, settings.db_outage_grace_seconds):
                    self._raise("lost")

    def _look(self) -> None:
        with transaction(self.factory) as session:
            row = attempts.holder(session, self.job_id)
        mine = row is not None and (row.owner, row.attempt) == (self.owner, self.attempt)
        if row is None or not mine or row.status not in OWNED_JOB_STATUSES:
            self._raise("lost")
        elif row.status == JobStatus.CANCELLING:
            self._raise("cancel")
        elif row.status == JobStatus.PAUSING:
            self._raise("pause")

    def _raise(self, reason: StopReason) -> None:
        if self.stop_reason != reason:
            log.info("job %s: %s", self.job_id, REASONS[reason])
        # A cancel overrides a pause (a pausing job can be cancelled), and a lost lease overrides both.
        if self.stop_reason != "lost" and not (self.stop_reason == "cancel" and reason == "pause"):
            self.stop_reason = reason

    def lose(self) -> None:
        """The job was found taken (a write answered LeaseLost)."""
        self._raise("lost")

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)
