"""Downloads through a real server: a cut connection resumes with Range and If-Range, the sha256 is
checked at the end, and a file that does not match it is deleted, never moved into place."""

from __future__ import annotations

import hashlib
import os

import pytest

from app.client import AsyncClient, ChecksumMismatch, Client
from tests.app.client import worker_side
from tests.app.client.server import FAST_RETRY, MB

WEIGHTS = "model.safetensors"


@pytest.fixture
def finished_job(worker_factory):
    job_id = worker_side.queued_job(worker_factory)
    worker_side.run(worker_factory, job_id)
    return job_id


def test_a_cut_download_resumes_and_checks_the_sha256(
    proxy, api_server, api_key, worker_factory, finished_job, tmp_path
):
    content = os.urandom(3 * MB)
    stored = worker_side.publish(worker_factory, api_server, finished_job, WEIGHTS, content)
    proxy.arm(MB)  # the connection breaks after the first megabyte the server sends
    progress = []
    with Client(proxy.url, api_key, retry=FAST_RETRY) as client:
        done = client.jobs.download_weights(finished_job, tmp_path, on_progress=lambda n, total: progress.append(n))
    assert proxy.cuts == 1
    assert done.path == tmp_path / f"{finished_job}.safetensors"
    assert done.path.read_bytes() == content
    assert done.sha256 == stored.sha256 and done.bytes == 3 * MB and done.resumed == 1
    assert not (tmp_path / f"{finished_job}.safetensors.part").exists()
    first, second = proxy.request_heads("/weights")
    assert "range" not in first
    offset = int(second["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset < MB and second["if-range"] == f'"{stored.sha256}"'
    assert progress[-1] == 3 * MB


@pytest.mark.anyio
async def test_the_async_download_resumes_too(proxy, api_server, api_key, worker_factory, finished_job, tmp_path):
    content = os.urandom(2 * MB)
    worker_side.publish(worker_factory, api_server, finished_job, "model.json", content)
    proxy.arm(MB // 2)
    async with AsyncClient(proxy.url, api_key, retry=FAST_RETRY) as client:
        done = await client.jobs.download_artifact(finished_job, "model.json", tmp_path / "card.json")
    assert done.path.read_bytes() == content and done.resumed == 1


def test_a_download_that_does_not_match_its_sha256_is_deleted(api, api_server, worker_factory, finished_job, tmp_path):
    worker_side.publish(worker_factory, api_server, finished_job, WEIGHTS, b"tampered", sha256="ab" * 32)
    dest = tmp_path / "weights.safetensors"
    with pytest.raises(ChecksumMismatch) as error:
        api.jobs.download_weights(finished_job, dest)
    assert error.value.expected == "ab" * 32
    assert error.value.actual == hashlib.sha256(b"tampered").hexdigest()
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_a_part_left_by_an_earlier_run_resumes_given_the_sha256(
    proxy, api_server, api_key, worker_factory, finished_job, tmp_path
):
    content = os.urandom(MB)
    stored = worker_side.publish(worker_factory, api_server, finished_job, WEIGHTS, content)
    dest = tmp_path / "w.safetensors"
    dest.with_name("w.safetensors.part").write_bytes(content[:100_000])
    with Client(proxy.url, api_key, retry=FAST_RETRY) as client:
        done = client.jobs.download_artifact(finished_job, WEIGHTS, dest, sha256=stored.sha256)
    assert dest.read_bytes() == content and done.resumed == 1
    [head] = proxy.request_heads("/artifacts/")
    assert head["range"] == "bytes=100000-"


def test_a_corrupt_part_is_caught_by_the_final_check(api, api_server, worker_factory, finished_job, tmp_path):
    content = os.urandom(MB)
    stored = worker_side.publish(worker_factory, api_server, finished_job, WEIGHTS, content)
    dest = tmp_path / "w.safetensors"
    part = dest.with_name("w.safetensors.part")
    part.write_bytes(b"\0" * 100_000)  # same length as a real prefix, other bytes
    with pytest.raises(ChecksumMismatch):
        api.jobs.download_artifact(finished_job, WEIGHTS, dest, sha256=stored.sha256)
    assert not dest.exists() and not part.exists()
    done = api.jobs.download_artifact(finished_job, WEIGHTS, dest, sha256=stored.sha256)  # and a retry works
    assert done.path.read_bytes() == content
