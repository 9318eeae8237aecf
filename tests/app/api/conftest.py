"""Fixtures of the API's tests."""

from __future__ import annotations

import pytest

from app.db.session import transaction
from app.services.projects import create_api_key


@pytest.fixture
def keys(app, settings):
    """Auth on, and the headers of a key of each of two projects, alpha and beta."""
    settings.auth_enabled = True
    with transaction(app.state.session_factory) as session:
        _, alpha = create_api_key(session, "alpha")
        _, beta = create_api_key(session, "beta")
    return {"alpha": {"Authorization": f"Bearer {alpha}"}, "beta": {"Authorization": f"Bearer {beta}"}}
