"""Who a request acts for, remembered briefly per process: authenticating every request cost a query (the key
by its hash, with its project), the largest share of a cheap read's database time.

The bound: a key revoked in the database keeps working for at most ``auth_cache_seconds`` in each API process
that authenticated it within that time (the cache is per process, and only successes are remembered: an
unknown key asks the database every time, so a key created a moment ago works at once). A key's expiry is
checked on every hit, so an expired key stops at its expiry exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from app.clock import utcnow
from app.db.session import transaction
from app.services import projects

MAX_ENTRIES = 10_000  # past it the cache starts over: a bound on memory, not an eviction policy


@dataclass(frozen=True)
class Caller:
    """The project a request acts for (its API key's, or the default one while auth is off)."""

    project_id: str
    project_name: str


@dataclass(frozen=True)
class _Entry:
    caller: Caller
    fresh_until: float  # monotonic seconds
    key_expires_at: datetime | None


class CallerCache:
    """Bearer key (by its sha256) to caller, for ``seconds``; ``seconds == 0`` remembers nothing. Safe across
    threads: a read or a write of the dict is atomic, and two threads missing at once both ask the database."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[str | None, _Entry] = {}

    def caller(self, bearer: str | None, auth_required: bool) -> Caller | None:
        """The remembered caller for ``bearer`` (any, while auth is off), or None when the database must say."""
        entry = self._entries.get(_slot(bearer, auth_required))
        if entry is None or self.clock() >= entry.fresh_until:
            return None
        if entry.key_expires_at is not None and entry.key_expires_at <= utcnow():
            return None
        return entry.caller

    def lookup(self, session: Session, bearer: str | None, auth_required: bool, default_project: str) -> Caller:
        """The caller, from memory or through ``session``; what ``session`` finds is not remembered, since its
        transaction may yet roll back (with auth off, taking a default project it created with it)."""
        return self.caller(bearer, auth_required) or _ask(session, bearer, auth_required, default_project)[0]

    def authenticate(
        self, factory: sessionmaker[Session], bearer: str | None, auth_required: bool, default_project: str
    ) -> Caller:
        """The caller, from memory or from a short transaction of its own, remembered once that committed."""
        known = self.caller(bearer, auth_required)
        if known is not None:
            return known
        with transaction(factory) as session:
            caller, expires_at = _ask(session, bearer, auth_required, default_project)
        if self.seconds > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[_slot(bearer, auth_required)] = _Entry(caller, self.clock() + self.seconds, expires_at)
        return caller


def _ask(
    session: Session, bearer: str | None, auth_required: bool, default_project: str
) -> tuple[Caller, datetime | None]:
    """The caller and when its key expires, from the database; Unauthorized for a missing or invalid key."""
    if not auth_required:
        project = projects.get_or_create_project(session, default_project)
        return Caller(project_id=project.id, project_name=project.name), None
    key = projects.authenticate_key(session, bearer)
    return Caller(project_id=key.project.id, project_name=key.project.name), key.expires_at


def _slot(bearer: str | None, auth_required: bool) -> str | None:
    """The key's sha256 (never the key itself), or None for the default project while auth is off."""
    return projects.hash_key(bearer or "") if auth_required else None
