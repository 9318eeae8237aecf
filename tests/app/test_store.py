"""The artifact stores, the same tests for both: the local folder and S3 on a real gateway (SeaweedFS,
tests/s3.py). Atomic writes with a sha256, streams and byte ranges, moves, deletes, keys that cannot
escape; then what only one of them has (the folder's files, S3's multipart uploads and presigned URLs)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import uuid
from datetime import timedelta

import httpx
import pytest

from app import stores
from app.settings import Settings
from app.store import InvalidKey, LocalArtifactStore, ObjectMissing
from app.stores import StoreUrlError, abort_abandoned_writes_when_due, store_for
from app.stores.s3 import S3ArtifactStore
from tests.s3 import s3_client
from tests.s3 import store_listing as listed

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3(s3_gateway):
    client = s3_client(s3_gateway)
    yield s3_gateway, client
    client.close()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    gateway, client = request.getfixturevalue("s3")
    return S3ArtifactStore(client, gateway.bucket, f"t-{uuid.uuid4().hex[:10]}", part_bytes=5 * MIB)


def test_put_open_stat_delete(store):
    data = b"weights" * 300_000
    stored = store.put("jobs/ftjob_1/model.safetensors", io.BytesIO(data))
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    with store.open("jobs/ftjob_1/model.safetensors") as stream:
        assert stream.read() == data
    assert store.stat("jobs/ftjob_1/model.safetensors").size == len(data)
    assert store.delete("jobs/ftjob_1/model.safetensors") is True
    assert store.stat("jobs/ftjob_1/model.safetensors") is None
    assert store.delete("jobs/ftjob_1/model.safetensors") is False
    with pytest.raises(ObjectMissing):
        store.open("jobs/ftjob_1/model.safetensors")
    assert listed(store) == []


def test_put_file_stores_a_files_bytes_with_their_sha256(store, tmp_path):
    data = os.urandom(3 * MIB + 17)
    source = tmp_path / "epoch-0001.pt"
    source.write_bytes(data)
    stored = store.put_file("jobs/ftjob_1/epoch-0001.pt", source)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    source.unlink()  # the run's folder goes when the attempt ends: the stored object stays
    with store.open("jobs/ftjob_1/epoch-0001.pt") as stream:
        assert stream.read() == data


def test_put_file_links_a_file_on_the_folders_filesystem_and_copies_one_elsewhere(tmp_path, monkeypatch):
    local = LocalArtifactStore(tmp_path / "store")
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights" * 1000)
    local.put_file("jobs/ftjob_1/model.safetensors", source)
    assert source.samefile(local.local_path("jobs/ftjob_1/model.safetensors"))  # a link, no copy

    def other_filesystem(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", other_filesystem)
    stored = local.put_file("jobs/ftjob_2/model.safetensors", source)
    copy = local.local_path("jobs/ftjob_2/model.safetensors")
    assert not source.samefile(copy) and copy.read_bytes() == source.read_bytes()
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert not [path for path in (tmp_path / "store").rglob("*") if path.name.startswith(".")]  # no temporary left


def test_put_takes_an_iterable_of_chunks(store):
    stored = store.put("a/b", iter([b"ab", b"cd"]))
    assert stored.sha256 == hashlib.sha256(b"abcd").hexdigest()
    with store.open("a/b") as stream:
        assert stream.read() == b"abcd"


def test_a_large_object_is_written_in_parts_and_reads_back_whole(store):
    block = bytes(range(256)) * 4096  # 1 MiB
    data = b"".join(block[i:] + block[:i] for i in range(12))  # 12 MiB: three 5 MiB parts on S3
    stored = store.put("jobs/ftjob_1/epoch-1.pt", io.BytesIO(data))
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    digest = hashlib.sha256()
    with store.open("jobs/ftjob_1/epoch-1.pt") as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == stored.sha256
    assert listed(store) == ["jobs/ftjob_1/epoch-1.pt"]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_object(store):
    store.put("a/model", io.BytesIO(b"old"))

    def failing():
        yield b"new part" * MIB  # 8 MiB: on S3 a multipart upload is under way when it fails
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.put("a/model", failing())
    with store.open("a/model") as stream:
        assert stream.read() == b"old"
    assert listed(store) == ["a/model"]  # no temporary file, no open multipart upload


@pytest.mark.parametrize("size", [4, 7 * MIB], ids=["small", "multipart"])
def test_a_writer_is_invisible_until_commit_and_abort_leaves_nothing(store, size):
    writer = store.writer("x/y")
    writer.write(b"h" * size)
    assert store.stat("x/y") is None
    assert writer.commit().size == size
    assert store.stat("x/y").size == size
    aborted = store.writer("x/z")
    aborted.write(b"h" * size)
    aborted.abort()
    assert store.stat("x/z") is None
    assert listed(store) == ["x/y"]


def test_read_range_streams_the_bytes_asked_for(store):
    data = bytes(range(256)) * 40_000  # 10 MB
    store.put("j/w", io.BytesIO(data))
    assert b"".join(store.read_range("j/w", 0, len(data))) == data
    assert b"".join(store.read_range("j/w", 1000, 5)) == data[1000:1005]
    assert b"".join(store.read_range("j/w", len(data) - 3, 3)) == data[-3:]
    assert max(len(chunk) for chunk in store.read_range("j/w", 0, len(data))) <= getattr(store, "part_bytes", MIB)
    with pytest.raises(ObjectMissing):
        next(iter(store.read_range("j/none", 0, 5)))


def test_move_renames_an_object(store):
    store.put("uploads/u1", io.BytesIO(b"archive"))
    store.move("uploads/u1", "archives/a1")
    assert store.stat("uploads/u1") is None
    with store.open("archives/a1") as stream:
        assert stream.read() == b"archive"


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "", "a/./b", "a\\b", ".hidden"])
def test_keys_cannot_escape_the_store(store, key):
    with pytest.raises(InvalidKey):
        store.put(key, io.BytesIO(b"x"))


def test_delete_prefix(store):
    store.put("datasets/ds_1/a.zip", io.BytesIO(b"1"))
    store.put("datasets/ds_1/sub/b", io.BytesIO(b"2"))
    store.put("datasets/ds_10/a.zip", io.BytesIO(b"3"))
    store.delete_prefix("datasets/ds_1")
    assert listed(store) == ["datasets/ds_10/a.zip"]  # a prefix is a folder: ds_10 is not under ds_1
    store.delete_prefix("datasets/nothing")


def test_check_passes_on_a_working_store(store):
    store.check()


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    (store.root / "jobs").mkdir(parents=True)
    (store.root / "jobs" / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidKey):
        store.put("jobs/link/file", io.BytesIO(b"x"))


def test_a_folder_has_no_presigned_url(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    store.put("a/b", [b"x"])
    assert store.presigned_url("a/b", filename="b", expires_seconds=60) is None


def test_a_presigned_url_serves_the_object_and_its_ranges(s3):
    gateway, client = s3
    store = S3ArtifactStore(client, gateway.bucket, f"t-{uuid.uuid4().hex[:10]}")
    store.put("jobs/ftjob_1/model.safetensors", [b"0123456789"])
    url = store.presigned_url("jobs/ftjob_1/model.safetensors", filename="ftjob_1.safetensors", expires_seconds=60)
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == b"0123456789"
    assert "ftjob_1.safetensors" in whole.headers["content-disposition"]
    part = httpx.get(url, headers={"Range": "bytes=3-5"})
    assert part.status_code == 206 and part.content == b"345"
    assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403


def test_a_missing_bucket_fails_the_check(s3):
    _, client = s3
    with pytest.raises(OSError, match="no-such-bucket"):
        S3ArtifactStore(client, "no-such-bucket").check()


def test_store_url_picks_the_store(tmp_path, s3):
    gateway, _ = s3
    local = store_for(Settings(home=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path / "artifacts"
    assert store_for(Settings(store_url=f"file://{tmp_path}/elsewhere")).url == (tmp_path / "elsewhere").as_uri()
    env = gateway.env("deploy/one")
    remote = store_for(
        Settings(
            store_url=env["FT_STORE_URL"],
            s3_endpoint_url=env["FT_S3_ENDPOINT_URL"],
            s3_access_key_id=env["FT_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=env["FT_S3_SECRET_ACCESS_KEY"],
        )
    )
    assert isinstance(remote, S3ArtifactStore) and remote.url == f"s3://{gateway.bucket}/deploy/one"
    remote.put("k", [b"v"])
    assert remote.stat("k").size == 1
    for bad in ("ftp://host/x", "s3:///prefix", "file://host/x", "relative/path"):
        with pytest.raises(StoreUrlError):
            store_for(Settings(store_url=bad))


def test_the_aws_environment_variables_are_honoured(s3, monkeypatch):
    gateway, _ = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", gateway.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", gateway.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", gateway.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = store_for(Settings(store_url=f"s3://{gateway.bucket}/from-env"))
    store.put("a", [b"env"])
    assert store.stat("a").size == 3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId|403"):
        store_for(Settings(store_url=f"s3://{gateway.bucket}/from-env")).put("b", [b"x"])


def test_the_create_bucket_command_creates_it_once(s3, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main

    gateway, client = s3
    bucket = f"fttest-new-{uuid.uuid4().hex[:8]}"
    for name, value in (gateway.env("deploy") | {"FT_STORE_URL": f"s3://{bucket}/deploy"}).items():
        monkeypatch.setenv(name, value)
    first = CliRunner().invoke(main, ["store", "create-bucket", "--wait", "5"])
    again = CliRunner().invoke(main, ["store", "create-bucket", "--wait", "5"])
    assert (first.exit_code, again.exit_code) == (0, 0), first.output + again.output
    assert first.output.strip() == f"s3://{bucket}/deploy: created"
    assert again.output.strip() == f"s3://{bucket}/deploy: already there"
    client.head_bucket(Bucket=bucket)
    monkeypatch.setenv("FT_S3_SECRET_ACCESS_KEY", "wrong")
    refused = CliRunner().invoke(main, ["store", "create-bucket", "--wait", "1"])
    assert refused.exit_code == 1 and "cannot create the bucket" in refused.output


def leave_unfinished(store, key: str) -> None:
    """What a process killed mid-write leaves: on S3 a multipart upload begun with a part sent, never
    completed nor aborted; in a folder the temporary file beside the target."""
    if isinstance(store, S3ArtifactStore):
        name = store.object_name(key)
        upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=name)["UploadId"]
        store.client.upload_part(Bucket=store.bucket, Key=name, UploadId=upload, PartNumber=1, Body=b"p" * 5 * MIB)
    else:
        store.writer(key).write(b"p" * MIB)  # the writer dropped as it is: its file stays


def test_writes_abandoned_by_a_killed_process_are_undone_and_recent_ones_kept(store):
    store.put("jobs/ftjob_1/model.safetensors", [b"finished"])
    leave_unfinished(store, "jobs/ftjob_1/epoch-3.pt")
    assert len(listed(store)) == 2  # an open upload (S3), a temporary file (folder)
    assert store.abort_abandoned_writes(timedelta(hours=1)) == []  # begun just now: kept
    assert len(listed(store)) == 2
    assert store.abort_abandoned_writes(timedelta(0)) == ["jobs/ftjob_1/epoch-3.pt"]
    assert listed(store) == ["jobs/ftjob_1/model.safetensors"]
    if isinstance(store, S3ArtifactStore):
        assert store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", []) == []
    assert store.abort_abandoned_writes(timedelta(0)) == []


def test_only_the_stores_own_uploads_are_aborted(s3):
    """Another prefix of the same bucket (another deployment, another application) is left alone."""
    gateway, client = s3
    ours = S3ArtifactStore(client, gateway.bucket, f"t-{uuid.uuid4().hex[:10]}", part_bytes=5 * MIB)
    theirs = S3ArtifactStore(client, gateway.bucket, f"t-{uuid.uuid4().hex[:10]}", part_bytes=5 * MIB)
    leave_unfinished(ours, "a/b")
    leave_unfinished(theirs, "a/b")
    assert ours.abort_abandoned_writes(timedelta(0)) == ["a/b"]
    assert listed(ours) == [] and listed(theirs) == [f"(open upload) {theirs.prefix}/a/b"]
    assert theirs.abort_abandoned_writes(timedelta(0)) == ["a/b"]


def test_a_temporary_file_written_to_recently_is_kept_an_old_one_removed(tmp_path):
    """In a folder the age is the time of the last write: a long write in progress is never cut off."""
    store = LocalArtifactStore(tmp_path / "store")
    leave_unfinished(store, "jobs/ftjob_1/epoch-1.pt")
    leave_unfinished(store, "jobs/ftjob_1/epoch-2.pt")
    (old,) = (store.root / "jobs" / "ftjob_1").glob(".epoch-1.pt.*.partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    assert store.abort_abandoned_writes(timedelta(hours=24)) == ["jobs/ftjob_1/epoch-1.pt"]
    assert [path.name.startswith(".epoch-2.pt.") for path in (store.root / "jobs" / "ftjob_1").iterdir()] == [True]


def test_the_periodic_look_runs_once_an_hour_in_a_thread(store, monkeypatch):
    # 0 (model_copy does not validate; the setting takes more than 0): whatever is there now; S3 dates an
    # upload to the second, so the smallest valid setting would keep one begun in the second of the look
    settings = Settings().model_copy(update={"abandoned_write_hours": 0.0})
    leave_unfinished(store, "datasets/ds_1/archive.tar")
    first = abort_abandoned_writes_when_due(store, settings)
    assert first is not None
    first.join(60)
    assert listed(store) == []
    leave_unfinished(store, "datasets/ds_2/archive.tar")
    assert abort_abandoned_writes_when_due(store, settings) is None  # looked less than an hour ago
    assert len(listed(store)) == 1
    monkeypatch.setitem(stores._abandoned_checked, store.url, time.monotonic() - stores.ABANDONED_CHECK_SECONDS)
    again = abort_abandoned_writes_when_due(store, settings)  # an hour later
    assert again is not None
    again.join(60)
    assert listed(store) == []


def test_a_store_that_fails_the_look_is_logged_not_raised(s3, caplog):
    _, client = s3
    missing = S3ArtifactStore(client, f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.WARNING, logger="app.stores"):
        thread = abort_abandoned_writes_when_due(missing, Settings())
        assert thread is not None
        thread.join(60)
    assert "could not look for abandoned writes" in caplog.text


def test_the_gc_command_aborts_the_abandoned_uploads(s3, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main

    gateway, client = s3
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    for name, value in gateway.env(prefix).items():
        monkeypatch.setenv(name, value)
    store = S3ArtifactStore(client, gateway.bucket, prefix)
    leave_unfinished(store, "jobs/ftjob_9/epoch-2.pt")
    kept = CliRunner().invoke(main, ["store", "gc"])  # FT_ABANDONED_WRITE_HOURS: 24 by default
    assert kept.exit_code == 0, kept.output
    assert len(listed(store)) == 1
    now = CliRunner().invoke(main, ["store", "gc", "--older-than-hours", "0"])
    assert now.exit_code == 0, now.output
    assert now.stdout.strip() == "jobs/ftjob_9/epoch-2.pt"
    assert listed(store) == []


def test_the_periodic_sweep_undoes_the_stores_abandoned_writes(settings):
    from app.context import Runtime
    from app.dispatch.sweep import sweep

    runtime = Runtime.from_settings(settings)
    try:
        store = runtime.store
        leave_unfinished(store, "jobs/ftjob_1/epoch-1.pt")
        (partial,) = store.root.rglob(".*.partial")
        two_days_ago = time.time() - 2 * 24 * 3600  # past FT_ABANDONED_WRITE_HOURS, 24 by default
        os.utime(partial, (two_days_ago, two_days_ago))
        sweep(runtime)
        deadline = time.monotonic() + 60  # the look runs in a thread of its own
        while listed(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listed(store) == []
    finally:
        runtime.close()
