"""Data set archives in the store, on the local folder and on S3 (a real gateway): an archive uploaded
twice is stored once, deleting a data set removes its archive unless another still reads it, a failed
upload leaves nothing, and validation reads the archive from the store (through the worker's cache)."""

from __future__ import annotations

import pytest

from app.statuses import DatasetStatus
from tests.app.helpers import image_tree, upload, validate_queued, zip_bytes
from tests.s3 import s3_settings, store_listing

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["local", "s3"])
def settings(request, settings):
    """Every test on both stores."""
    return settings if request.param == "local" else s3_settings(settings, request.getfixturevalue("s3_gateway"))


async def test_the_same_archive_uploaded_twice_is_stored_once_and_deleted_with_its_last_reader(client, app, settings):
    archive = zip_bytes(image_tree())
    first = (await upload(client, archive, filename="pets.zip")).json()
    second = (await upload(client, archive, filename="copy.zip", name="again")).json()
    assert first["sha256"] == second["sha256"] and first["id"] != second["id"]
    store = app.state.store
    assert store_listing(store) == [f"datasets/{first['id']}/pets.zip"]  # the second upload's copy is gone
    assert sorted(validate_queued(app, settings)) == sorted([first["id"], second["id"]])
    for shown in (first, second):
        assert (await client.get(f"/v1/datasets/{shown['id']}")).json()["status"] == DatasetStatus.READY
    assert (await client.delete(f"/v1/datasets/{first['id']}")).status_code == 200
    kept = [f"datasets/{first['id']}/pets.zip", f"datasets/{second['id']}/thumbnails.json"]
    assert store_listing(store) == kept  # the second still reads the archive; the first's thumbnails are gone
    third = (await upload(client, archive, filename="third.zip")).json()  # found through the second
    assert store_listing(store) == kept
    assert (await client.delete(f"/v1/datasets/{second['id']}")).status_code == 200
    assert (await client.delete(f"/v1/datasets/{third['id']}")).status_code == 200
    assert store_listing(store) == []


async def test_different_archives_are_stored_apart(client, app):
    one = (await upload(client, zip_bytes(image_tree()), filename="a.zip")).json()
    two = (await upload(client, zip_bytes(image_tree(per_class=4)), filename="a.zip")).json()
    assert store_listing(app.state.store) == sorted([f"datasets/{one['id']}/a.zip", f"datasets/{two['id']}/a.zip"])


async def test_an_upload_over_the_limit_leaves_nothing_in_the_store(client, app, settings):
    settings.max_upload_bytes = 13 << 19  # 6.5 MiB: past one 5 MiB part, on S3 a multipart upload is under way
    response = await upload(client, b"\0" * (7 << 20), filename="big.zip")
    assert response.status_code == 413
    assert store_listing(app.state.store) == []


async def test_an_archive_gone_from_the_store_fails_validation_with_a_reason(client, app, settings):
    shown = (await upload(client, zip_bytes(image_tree()), filename="pets.zip")).json()
    app.state.store.delete(f"datasets/{shown['id']}/pets.zip")
    validate_queued(app, settings)
    failed = (await client.get(f"/v1/datasets/{shown['id']}")).json()
    assert failed["status"] == DatasetStatus.FAILED
    assert failed["error"]["code"] == "dataset_missing"
    assert "pets.zip" in failed["error"]["message"]
