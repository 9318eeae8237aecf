"""Data set uploads over HTTP: streamed to the store, validated off the request path, listed, deleted."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from app.dispatch.names import CPU_QUEUE, VALIDATE_DATASET
from app.statuses import DatasetStatus
from tests.app.helpers import (
    broker_messages,
    image_tree,
    job_body,
    png_bytes,
    ready_dataset,
    upload,
    validate_queued,
    zip_bytes,
)

pytestmark = pytest.mark.anyio


async def test_upload_answers_validating_and_sends_the_validation_task(client, app, settings):
    archive = zip_bytes(image_tree())
    response = await upload(client, archive, filename="pets.zip", name="my pets")
    assert response.status_code == 201, response.text
    shown = response.json()
    assert shown["object"] == "dataset"
    assert shown["id"].startswith("ds_") and len(shown["id"]) == 3 + 26
    assert shown["status"] == "validating"
    assert shown["name"] == "my pets"
    assert shown["filename"] == "pets.zip"
    assert shown["bytes"] == len(archive)
    assert shown["sha256"] == hashlib.sha256(archive).hexdigest()
    [message] = broker_messages(app, CPU_QUEUE)
    assert message["task"] == VALIDATE_DATASET
    assert message["args"] == [shown["id"]]
    assert message["expires"] is not None
    stored = app.state.store.local_path(f"datasets/{shown['id']}/pets.zip")
    assert stored.read_bytes() == archive


async def test_validation_makes_the_data_set_ready_with_classes_and_counts(client, app, settings):
    files = image_tree(("cat", "dog", "fox"), per_class=2, splits=("train", "val"))
    shown = await ready_dataset(client, app, settings, files)
    assert shown["class_names"] == ["cat", "dog", "fox"]
    assert shown["counts"] == {"train": {"cat": 2, "dog": 2, "fox": 2}, "val": {"cat": 2, "dog": 2, "fox": 2}}
    assert shown["num_images"] == 12
    assert shown["validated_at"] >= shown["created_at"]
    assert shown["error"] is None


async def test_the_name_defaults_to_the_file_name(client):
    response = await upload(client, zip_bytes(image_tree()), filename="../../etc/My Cats.zip")
    assert response.status_code == 201
    assert response.json()["name"] == "My_Cats.zip"


async def test_list_is_newest_first_and_paginates(client, app, settings):
    ids = [(await upload(client, zip_bytes(image_tree()), filename=f"{i}.zip")).json()["id"] for i in range(5)]
    first = (await client.get("/v1/datasets", params={"limit": 2})).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["last_id"] == ids[3]
    second = (await client.get("/v1/datasets", params={"limit": 2, "after": first["last_id"]})).json()
    third = (await client.get("/v1/datasets", params={"limit": 2, "after": second["last_id"]})).json()
    assert [d["id"] for d in second["data"] + third["data"]] == ids[::-1][2:]
    assert third["has_more"] is False
    validate_queued(app, settings)
    ready = (await client.get("/v1/datasets", params={"status": "ready"})).json()
    assert len(ready["data"]) == 5
    assert (await client.get("/v1/datasets", params={"status": "failed"})).json()["data"] == []


async def test_get_of_an_unknown_data_set_is_a_404_envelope(client):
    response = await client.get("/v1/datasets/ds_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "ds_01JAAAAAAAAAAAAAAAAAAAAAAA" in error["message"]


async def test_delete_removes_it_and_its_files(client, app, settings):
    shown = await ready_dataset(client, app, settings)
    folder = app.state.store.local_path(f"datasets/{shown['id']}")
    extracted = settings.data_path / "datasets" / shown["id"]
    assert folder.is_dir() and extracted.is_dir()
    response = await client.delete(f"/v1/datasets/{shown['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": shown["id"], "object": "dataset.deleted", "deleted": True}
    assert not folder.exists() and not extracted.exists()
    assert (await client.get(f"/v1/datasets/{shown['id']}")).status_code == 404
    assert (await client.delete(f"/v1/datasets/{shown['id']}")).status_code == 404
    assert (await client.get("/v1/datasets")).json()["data"] == []


async def test_delete_is_refused_while_a_job_uses_it(client, app, settings):
    shown = await ready_dataset(client, app, settings)
    job = (await client.post("/v1/jobs", json=job_body(shown["id"]))).json()
    response = await client.delete(f"/v1/datasets/{shown['id']}")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "dataset_in_use"
    assert job["id"] in error["message"]
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert (await client.delete(f"/v1/datasets/{shown['id']}")).status_code == 200


async def test_upload_over_the_limit_is_a_413_and_leaves_no_file(client, app, settings):
    settings.max_upload_bytes = 50_000
    big = bytes(range(256)) * 1000  # 256 kB

    async def chunked():  # no Content-Length: the limit is enforced while streaming
        boundary = b"xyzboundary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n'
        for start in range(0, len(big), 16_384):
            yield big[start : start + 16_384]
        yield b"\r\n--" + boundary + b"--\r\n"

    response = await client.post(
        "/v1/datasets", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xyzboundary"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert response.json()["error"]["param"] == "file"
    leftovers = [p for p in settings.artifacts_path.rglob("*") if p.is_file()]
    assert leftovers == []
    assert broker_messages(app, CPU_QUEUE) == []
    assert (await client.get("/v1/datasets")).json()["data"] == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading(client, settings):
    settings.max_upload_bytes = 10_000
    response = await upload(client, b"x" * (2 << 20))
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"content-type": "application/json"}, b"{}", 415, "unsupported_media_type"),
        ({"content-type": "multipart/form-data"}, b"", 415, "unsupported_media_type"),
        (
            {"content-type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nhello\r\n--b--\r\n',
            422,
            "invalid_request",
        ),
        (
            {"content-type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK',
            400,
            "invalid_multipart",
        ),
        ({"content-type": "multipart/form-data; boundary=b"}, b"garbage without any boundary", 400, None),
        (
            {"content-type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n\r\n--b--\r\n',
            422,
            "invalid_request",
        ),
    ],
    ids=["json", "no-boundary", "no-file-part", "truncated", "garbage", "empty-file"],
)
async def test_malformed_uploads_are_clean_4xx(client, settings, headers, content, status, code):
    response = await client.post("/v1/datasets", content=content, headers=headers)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code
    assert [p for p in settings.artifacts_path.rglob("*") if p.is_file()] == []


async def test_idempotent_upload_returns_the_same_data_set(client, app, settings):
    archive = zip_bytes(image_tree())
    headers = {"Idempotency-Key": "upload-1"}
    first = await upload(client, archive, headers=headers)
    again = await upload(client, archive, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert len(broker_messages(app, CPU_QUEUE)) == 1
    files = sorted(p.name for p in settings.artifacts_path.rglob("*") if p.is_file())
    assert files == ["pets.zip"]  # the replay's copy was deleted
    other = await upload(client, zip_bytes(image_tree(per_class=4)), headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len((await client.get("/v1/datasets")).json()["data"]) == 1


async def test_a_failed_validation_lists_reasons(client, app, settings):
    response = await upload(client, zip_bytes({"train/only/1.png": image_tree()["train/cat/0.png"]}))
    validate_queued(app, settings)
    shown = (await client.get(f"/v1/datasets/{response.json()['id']}")).json()
    assert shown["status"] == DatasetStatus.FAILED
    assert shown["error"]["code"] == "dataset_invalid"
    assert any("at least two classes" in reason for reason in shown["error"]["reasons"])
    job = await client.post("/v1/jobs", json=job_body(shown["id"]))
    assert job.status_code == 409
    assert job.json()["error"]["code"] == "dataset_not_ready"


async def test_thumbnails_show_the_first_images_of_each_class(client, app, settings):
    files = image_tree(classes=("cat", "dog"), per_class=5) | {"train/bird/big.png": png_bytes((9, 9, 9), size=200)}
    dataset = await ready_dataset(client, app, settings, files)
    sheet = (await client.get(f"/v1/datasets/{dataset['id']}/thumbnails")).json()
    assert sheet["object"] == "dataset.thumbnails" and sheet["pixels"] == 64
    assert [c["name"] for c in sheet["classes"]] == ["bird", "cat", "dog"]

    def pictures(shown):
        prefix = "data:image/png;base64,"
        return [Image.open(io.BytesIO(base64.b64decode(url.removeprefix(prefix)))) for url in shown["images"]]

    [big] = pictures(sheet["classes"][0])
    assert big.size == (64, 64) and big.getpixel((5, 5)) == (9, 9, 9)  # shrunk to 64 px
    for index, shown in enumerate(sheet["classes"][1:]):
        images = pictures(shown)  # the first four of five, by path; small images keep their size
        assert [image.size for image in images] == [(8, 8)] * 4
        assert [image.getpixel((0, 0)) for image in images] == [(40 * index % 255, 100, 20 * i % 255) for i in range(4)]
    unknown = await client.get("/v1/datasets/ds_01JAAAAAAAAAAAAAAAAAAAAAAA/thumbnails")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
