"""Uploads through a real uvicorn server: a 50 MB archive streams to the store while the server's memory
stays flat, the sha256 matches, the limit answers 413, and a CIFAR-10 subset ends ``ready``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import tar_gz_bytes
from tests.app.servers import Server, uvicorn_server
from tests.cifar import make_cifar_subset

MB = 1 << 20


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("uvicorn-home")
    with uvicorn_server(backend, home, FT_MAX_UPLOAD_BYTES=str(80 * MB)) as running:
        yield running


def test_a_50_mb_upload_streams_with_flat_memory(server, settings, tmp_path):
    archive = tmp_path / "big.tar"
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for i in range(50):
            block = os.urandom(MB) if i % 10 == 0 else bytes([i]) * MB
            out.write(block)
            digest.update(block)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.get("/v1/datasets")  # warm: the first request's imports and allocations are not the upload's
        baseline = server.reset_peak_memory()
        with archive.open("rb") as stream:
            response = client.post("/v1/datasets", files={"file": ("big.tar", stream)})
        peak = server.peak_memory()
    assert response.status_code == 201, response.text
    shown = response.json()
    assert shown["bytes"] == 50 * MB
    assert shown["sha256"] == digest.hexdigest()
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 20, f"the server's peak memory grew {growth_mb:.1f} MB for a 50 MB upload"
    stored = server.home / "artifacts" / "datasets" / shown["id"] / "big.tar"
    assert stored.stat().st_size == 50 * MB


def test_an_upload_over_the_limit_is_a_413(server, settings, tmp_path):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/datasets", files={"file": ("huge.zip", b"\0" * (90 * MB))})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"


def test_a_cifar10_subset_through_the_server_ends_ready(server, settings, tmp_path):
    from app.db.session import engine_for, session_factory
    from app.services.dataset_validation import run_dataset_validation
    from app.store import LocalArtifactStore

    archive = tar_gz_bytes(make_cifar_subset(tmp_path / "cifar", per_class=3, test_per_class=1))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/datasets", files={"file": ("cifar.tar.gz", archive)})
        assert response.status_code == 201, response.text
        dataset_id = response.json()["id"]
        # The validation task, as the worker runs it, on the server's database and store.
        server_settings = settings.model_copy(update={"home": server.home})
        engine = engine_for(server_settings)
        try:
            status = run_dataset_validation(
                session_factory(engine), LocalArtifactStore(server.home / "artifacts"), server_settings, dataset_id
            )
        finally:
            engine.dispose()
        assert status == "ready"
        shown = client.get(f"/v1/datasets/{dataset_id}").json()
    assert shown["status"] == "ready"
    assert shown["num_images"] == 40
    assert len(shown["class_names"]) == 10


def test_an_upload_in_progress_holds_no_database_place(backend, tmp_path_factory):
    """One database place (FT_DB_POOL_SIZE=1): a slow upload streaming in must not hold it, or every other
    request would wait for the upload to end."""
    import threading
    import time

    boundary = "finetune-test-boundary"

    def slow_body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.tar"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(8):
            time.sleep(0.5)
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    answers: dict[str, object] = {}

    def upload(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            answers["upload"] = client.post("/v1/datasets", content=slow_body(), headers=headers)
        answers["upload_done"] = time.monotonic()

    home = tmp_path_factory.mktemp("one-place-home")
    with uvicorn_server(backend, home, FT_DB_POOL_SIZE="1") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            client.get("/v1/datasets")  # warm
            uploading = threading.Thread(target=upload, args=(server.url,))
            uploading.start()
            time.sleep(1.0)  # the upload is streaming now
            listed = client.get("/v1/datasets")
            listed_at = time.monotonic()
        uploading.join(60)
    assert listed.status_code == 200, listed.text
    assert "upload_done" in answers and listed_at < answers["upload_done"], "the list waited for the upload"
    assert answers["upload"].status_code == 201, answers["upload"].text  # type: ignore[attr-defined]


def test_a_download_the_client_drops_midway_leaves_nothing_open(server, settings):
    """A client that goes away after the first MiB of a 64 MiB download: the server closes the stored file
    (nothing of it stays open, no memory held for the rest), and serves the whole file to the next client."""
    import socket
    import time

    from app.db.session import engine_for, session_factory, transaction
    from app.services.job_records import register_artifact
    from app.store import LocalArtifactStore
    from tests.app.factories import make_job

    body = os.urandom(MB) * 64
    store = LocalArtifactStore(server.home / "artifacts")
    engine = engine_for(settings.model_copy(update={"home": server.home}))
    try:
        with transaction(session_factory(engine)) as session:
            job_id = make_job(session).id
            register_artifact(
                session, job_id, "model.safetensors", store.put(f"jobs/{job_id}/model.safetensors", [body])
            )
    finally:
        engine.dispose()
    stored = (server.home / "artifacts" / "jobs" / job_id / "model.safetensors").resolve()

    def open_copies() -> int:
        copies = 0
        for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
            try:
                copies += str(fd.readlink()) == str(stored)
            except FileNotFoundError:  # closed between the listing and the look: not open, then
                continue
        return copies

    # A small receive window, as a slow client's: the kernel's buffers would otherwise take tens of MiB at once.
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)])
    with httpx.Client(base_url=server.url, timeout=60, transport=transport) as client:
        baseline = server.reset_peak_memory()
        with client.stream("GET", f"/v1/jobs/{job_id}/weights") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(64 * MB)
            chunks = response.iter_raw(MB)  # held: a dropped iterator would close the response at once
            assert next(chunks) and open_copies() == 1  # the server is sending from the stored file
        # Closed before the end: httpx drops the connection rather than read the rest.
        deadline = time.monotonic() + 15
        while open_copies():
            assert time.monotonic() < deadline, "the server still holds the file a gone client was reading"
            time.sleep(0.1)
        assert (server.peak_memory() - baseline) / 1024 < 20  # MB: never the rest of the file in memory
        whole = client.get(f"/v1/jobs/{job_id}/weights")
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == hashlib.sha256(body).hexdigest()
