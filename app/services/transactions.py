"""The one exception to "services do not commit".

A service works in the session its caller's transaction gave it (the request's dependency, the task wrapper)
and never commits. A few services instead bracket slow work between short transactions of their own, so that
no row lock and no pooled connection is held while the slow part runs:

- ``datasets`` validation (``dataset_validation.run_dataset_validation``): reads the row, extracts and checks
  the archive (seconds to minutes), then records the outcome;
- the dry run (``jobs.dry_run_job``): checks the spec against the database, then plans the run with torch;
- exports (``exports.run_export``): claims the row, exports and parity-checks the weights, then records them.

They open those transactions with ``short_transaction``. The sweep (``dispatching.sweep``) is not a service
called by a request but a periodic job; it commits each of its steps on its own for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from app.db.session import transaction


@contextmanager
def short_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction the service commits itself, before or after slow work that must hold nothing open."""
    with transaction(factory) as session:
        yield session
