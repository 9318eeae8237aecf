"""Idempotency keys on the real database: a create claims its key before its work, so a racing twin waits for
that commit and then gets the first request's record to replay, not an error."""

from __future__ import annotations

import threading

import pytest

from app.db.session import transaction
from app.errors import Conflict
from app.services import idempotency
from app.services.idempotency import IdempotencyKey
from app.services.projects import get_or_create_project


@pytest.fixture
def project_id(settings, factory) -> str:
    with transaction(factory) as session:
        return get_or_create_project(session, "default").id


def key(body_hash: str = "a" * 64) -> IdempotencyKey:
    return IdempotencyKey("retry-1", "jobs.create", body_hash, ttl_seconds=3600)


def claim_in_thread(factory, project_id: str, given: IdempotencyKey, found: list) -> threading.Thread:
    def claim() -> None:
        try:
            with transaction(factory) as session:
                record = idempotency.claim(session, project_id, given, "ftjob_second", 201)
                found.append(record.resource_id if record is not None else None)
        except Conflict as error:
            found.append(error)

    thread = threading.Thread(target=claim)
    thread.start()
    return thread


def test_a_twin_claiming_while_the_first_works_replays_the_first_once_it_commits(factory, project_id):
    found: list = []
    with transaction(factory) as session:
        assert idempotency.claim(session, project_id, key(), "ftjob_first", 201) is None
        twin = claim_in_thread(factory, project_id, key(), found)
        twin.join(1.0)
        assert twin.is_alive() and not found  # it waits for this transaction, holding no error
    twin.join(30)
    assert found == ["ftjob_first"]


def test_a_twin_whose_first_rolled_back_claims_the_key_itself(factory, project_id):
    found: list = []
    with pytest.raises(RuntimeError), transaction(factory) as session:
        assert idempotency.claim(session, project_id, key(), "ftjob_first", 201) is None
        twin = claim_in_thread(factory, project_id, key(), found)
        twin.join(0.5)
        raise RuntimeError("the first create failed (say, an invalid spec)")
    twin.join(30)
    assert found == [None]  # claimed: it does the work


def test_a_twin_with_another_body_is_a_conflict(factory, project_id):
    found: list = []
    with transaction(factory) as session:
        idempotency.claim(session, project_id, key(), "ftjob_first", 201)
        twin = claim_in_thread(factory, project_id, key("b" * 64), found)
        twin.join(0.5)
    twin.join(30)
    assert len(found) == 1 and isinstance(found[0], Conflict)
    assert found[0].code == "idempotency_key_reused"
