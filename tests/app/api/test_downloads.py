"""Downloads: Content-Length, an ETag of the sha256, Range requests that resume a broken download; from
the local folder and from S3 (a real gateway) alike, streamed through the API or redirected to S3."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from app.db.session import transaction
from app.services.job_records import register_artifact
from app.services.projects import get_or_create_project
from tests.app.factories import make_job
from tests.s3 import s3_settings

pytestmark = pytest.mark.anyio

MIB = 1 << 20
BODY = os.urandom(3 * MIB + 12345)  # three chunks and a bit
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(params=["local", "s3"])
def settings(request, settings):
    """Every test on both stores."""
    return settings if request.param == "local" else s3_settings(settings, request.getfixturevalue("s3_gateway"))


@pytest.fixture
def artifact_job(app) -> str:
    """A job with a weights file and a model card in the store."""
    store = app.state.store
    with transaction(app.state.session_factory) as session:
        job = make_job(session)
        for name, body in (("model.safetensors", BODY), ("model.json", b'{"backbone": "resnet18"}')):
            stored = store.put(f"jobs/{job.id}/{name}", [body])
            register_artifact(session, job.id, name, stored)
        return job.id


async def test_the_whole_file_with_length_and_etag(client, artifact_job):
    response = await client.get(f"/v1/jobs/{artifact_job}/weights")
    assert response.status_code == 200
    assert response.content == BODY
    assert response.headers["content-length"] == str(len(BODY))
    assert response.headers["etag"] == f'"{SHA}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-disposition"] == f'attachment; filename="{artifact_job}.safetensors"'
    card = await client.get(f"/v1/jobs/{artifact_job}/artifacts/model.json")
    assert card.json() == {"backbone": "resnet18"}


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000000-", 1000000, len(BODY) - 1),
        ("bytes=-500", len(BODY) - 500, len(BODY) - 1),
        ("bytes=5-99999999", 5, len(BODY) - 1),
    ],
)
async def test_a_range_answers_206_with_that_part(client, artifact_job, header, start, end):
    response = await client.get(f"/v1/jobs/{artifact_job}/weights", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == BODY[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(BODY)}"
    assert response.headers["content-length"] == str(end - start + 1)


async def test_an_object_of_several_parts_streams_whole_and_in_ranges_across_them(app, client):
    """Past one part (5 MiB in the tests) S3 is read in ranged GETs fetched ahead of the one being sent,
    each sent in slices: the bytes come back whole and in order, a range across parts too."""
    body = os.urandom(11 * MIB + 7)  # three parts on S3, the last one of a MiB and 7 bytes
    with transaction(app.state.session_factory) as session:
        job = make_job(session)
        register_artifact(session, job.id, "model.safetensors", app.state.store.put(f"jobs/{job.id}/m", [body]))
        url = f"/v1/jobs/{job.id}/weights"
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.headers["content-length"] == str(len(body))
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(body).digest()
    for start, end in [(5 * MIB - 3, 10 * MIB + 2), (MIB + 1, 6 * MIB), (10 * MIB, len(body) - 1)]:
        part = await client.get(url, headers={"Range": f"bytes={start}-{end}"})
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes {start}-{end}/{len(body)}"
        assert part.content == body[start : end + 1]


async def test_a_broken_download_resumes_to_the_same_bytes(client, artifact_job):
    url = f"/v1/jobs/{artifact_job}/weights"
    first = await client.get(url, headers={"Range": "bytes=0-1048575"})
    etag = first.headers["etag"]
    rest = await client.get(url, headers={"Range": f"bytes={len(first.content)}-", "If-Range": etag})
    assert rest.status_code == 206
    assert hashlib.sha256(first.content + rest.content).hexdigest() == SHA


async def test_if_range_for_another_version_sends_the_whole_file(client, artifact_job):
    response = await client.get(
        f"/v1/jobs/{artifact_job}/weights", headers={"Range": "bytes=10-", "If-Range": '"something-else"'}
    )
    assert response.status_code == 200 and response.content == BODY


async def test_an_unsatisfiable_range_is_416(client, artifact_job):
    response = await client.get(f"/v1/jobs/{artifact_job}/weights", headers={"Range": f"bytes={len(BODY)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(BODY)}"


async def test_if_none_match_is_304_and_head_sends_no_body(client, artifact_job):
    url = f"/v1/jobs/{artifact_job}/weights"
    assert (await client.get(url, headers={"If-None-Match": f'"{SHA}"'})).status_code == 304
    head = await client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(BODY))


async def test_unknown_artifacts_and_other_projects_are_404(app, client, artifact_job):
    missing = await client.get(f"/v1/jobs/{artifact_job}/artifacts/nope.bin")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    with transaction(app.state.session_factory) as session:
        other = make_job(session, project="someone-else")
        get_or_create_project(session, "someone-else")
        other_id = other.id
    assert (await client.get(f"/v1/jobs/{other_id}/weights")).status_code == 404


async def test_without_redirects_an_s3_download_streams_through_the_api(app, client, artifact_job, settings):
    response = await client.get(f"/v1/jobs/{artifact_job}/weights")
    assert response.status_code == 200 and "location" not in response.headers


async def test_with_redirects_an_s3_download_is_a_302_to_a_presigned_url(app, client, artifact_job, settings):
    settings.download_redirect = True
    url = f"/v1/jobs/{artifact_job}/weights"
    response = await client.get(url)
    if not settings.store_url:  # a folder has no URL: the API streams the file as before
        assert response.status_code == 200 and response.content == BODY
        return
    assert response.status_code == 302
    assert response.headers["etag"] == f'"{SHA}"' and response.headers["x-content-sha256"] == SHA
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert "X-Amz-Expires=300" in location and "X-Amz-Signature=" in location
    async with httpx.AsyncClient() as direct:  # what a client following the redirect gets from the store
        whole = await direct.get(location)
        part = await direct.get(location, headers={"Range": "bytes=1000-1999"})
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == SHA
    assert part.status_code == 206 and part.content == BODY[1000:2000]
    assert (await client.get(url, headers={"If-None-Match": f'"{SHA}"'})).status_code == 304
