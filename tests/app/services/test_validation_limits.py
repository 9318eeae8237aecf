"""Validation that cannot take its host down: the child process's memory and time limits end a data set
``failed`` with the limit named; a validation that keeps dying is ended after its attempts, and a lost
task is re-sent once per interval, not at every sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.clock import utcnow
from app.db.models import Dataset
from app.db.session import transaction
from app.repositories import datasets as dataset_rows
from app.services.dataset_validation import run_dataset_validation
from app.services.datasets import stale_validations
from app.statuses import DatasetStatus
from tests.app.helpers import image_tree, upload, zip_bytes

pytestmark = pytest.mark.anyio


async def uploaded(client, files: dict[str, bytes] | None = None) -> str:
    response = await upload(client, zip_bytes(files or image_tree()))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def validate(app, settings, dataset_id: str) -> dict:
    run_dataset_validation(app.state.session_factory, app.state.store, settings, dataset_id)
    with transaction(app.state.session_factory) as session:
        row = session.get(Dataset, dataset_id)
        return {
            "status": row.status,
            "code": row.error_code,
            "message": row.error_message,
            "tries": row.validation_attempts,
        }


def large_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A PNG of one colour: a few KB that decode to width x height x 3 bytes (4 for RGBA)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height), (10, 200, 30, 255)[: len(mode)]).save(out, format="PNG")
    return out.getvalue()


async def test_a_validator_over_its_memory_limit_ends_the_data_set_failed(client, app, settings):
    # 144 MB to decode (36 Mpx of RGBA, under the 40 Mpx image limit), in a validator allowed 64 MiB beyond its
    # start-up and its decode threads' stacks (16 MiB at most):
    # the decoder's allocation fails, and the child with it. The same limit lets a good set through, one with a
    # 12 MB image to decode too (under the validator's start-up of about 135 MiB a limit of 64 would fail it).
    settings.validation_memory_mb = 64
    fine = validate(app, settings, await uploaded(client, {**image_tree(), "train/dog/big.png": large_png(2000, 2000)}))
    assert (fine["status"], fine["code"]) == (DatasetStatus.READY, None), fine
    dataset_id = await uploaded(client, {**image_tree(), "train/cat/huge.png": large_png(6000, 6000, "RGBA")})
    shown = validate(app, settings, dataset_id)
    assert shown["status"] == DatasetStatus.FAILED
    assert shown["code"] == "validation_crashed"
    assert "ran out of its memory limit of 64 MiB (FT_VALIDATION_MEMORY_MB)" in shown["message"]
    assert not (settings.data_path / "datasets" / dataset_id).exists()  # nothing half-extracted left


async def test_a_validator_past_its_time_limit_is_stopped(client, app, settings):
    dataset_id = await uploaded(client)
    settings.validation_timeout_seconds = 0.05
    shown = validate(app, settings, dataset_id)
    assert (shown["status"], shown["code"]) == (DatasetStatus.FAILED, "validation_timeout")
    assert "longer than 0.05 s and was stopped (FT_VALIDATION_TIMEOUT_SECONDS)" in shown["message"]


async def test_a_validation_that_keeps_dying_ends_failed_after_its_attempts(client, app, settings):
    dataset_id = await uploaded(client)
    with transaction(app.state.session_factory) as session:
        for _ in range(settings.validation_max_attempts):  # three tasks started on it, and died
            dataset_rows.start_validation_attempt(session, dataset_id)
    shown = validate(app, settings, dataset_id)
    assert (shown["status"], shown["code"], shown["tries"]) == (DatasetStatus.FAILED, "validation_crashed", 4)
    assert "validation died 3 times" in shown["message"] and "FT_VALIDATION_MAX_ATTEMPTS=3" in shown["message"]


async def test_a_good_archive_counts_one_attempt_and_ends_ready(client, app, settings):
    dataset_id = await uploaded(client)
    shown = validate(app, settings, dataset_id)
    assert (shown["status"], shown["tries"]) == (DatasetStatus.READY, 1)


async def test_a_lost_validation_task_is_resent_once_per_interval(client, app, settings):
    dataset_id = await uploaded(client)
    factory = app.state.session_factory
    with transaction(factory) as session:
        assert stale_validations(session, 600) == []  # sent at upload
        session.get(Dataset, dataset_id).validation_sent_at = utcnow() - timedelta(minutes=11)
    with transaction(factory) as session:
        assert stale_validations(session, 600) == [dataset_id]
    with transaction(factory) as session:
        assert stale_validations(session, 600) == []  # marked sent: not again at the next sweep
