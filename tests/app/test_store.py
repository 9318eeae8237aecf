"""The local artifact store: atomic writes with a sha256, streams, and keys that cannot escape."""

from __future__ import annotations

import hashlib
import io

import pytest

from app.store import InvalidKey, LocalArtifactStore, ObjectMissing


@pytest.fixture
def store(tmp_path):
    return LocalArtifactStore(tmp_path / "store")


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


def test_put_takes_an_iterable_of_chunks(store):
    stored = store.put("a/b", iter([b"ab", b"cd"]))
    assert stored.sha256 == hashlib.sha256(b"abcd").hexdigest()


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(store):
    store.put("a/model", io.BytesIO(b"old"))

    def failing():
        yield b"new part"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.put("a/model", failing())
    with store.open("a/model") as stream:
        assert stream.read() == b"old"
    assert sorted(p.name for p in (store.root / "a").iterdir()) == ["model"]  # no temporary file left


def test_a_writer_is_invisible_until_commit(store):
    writer = store.writer("x/y")
    writer.write(b"half")
    assert store.stat("x/y") is None
    writer.commit()
    assert store.stat("x/y").size == 4


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "", "a/./b", "a\\b", ".hidden"])
def test_keys_cannot_escape_the_store(store, key):
    with pytest.raises(InvalidKey):
        store.put(key, io.BytesIO(b"x"))


def test_a_symlink_out_of_the_store_is_refused(store, tmp_path):
    (store.root / "jobs").mkdir(parents=True)
    (store.root / "jobs" / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidKey):
        store.put("jobs/link/file", io.BytesIO(b"x"))


def test_delete_prefix(store):
    store.put("datasets/ds_1/a.zip", io.BytesIO(b"1"))
    store.put("datasets/ds_1/sub/b", io.BytesIO(b"2"))
    store.put("datasets/ds_2/a.zip", io.BytesIO(b"3"))
    store.delete_prefix("datasets/ds_1")
    assert not (store.root / "datasets" / "ds_1").exists()
    assert store.stat("datasets/ds_2/a.zip") is not None
