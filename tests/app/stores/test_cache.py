"""The worker's fetch cache on a real S3 gateway: fetched once per host however many jobs ask at once,
checked against the sha256, least recently used out first past its size, a folder store read in place."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid

import pytest

from app.store import LocalArtifactStore, StoredObject
from app.stores.cache import CacheCorrupt, FetchCache
from app.stores.s3 import S3ArtifactStore
from tests.s3 import s3_client


class CountingStore(S3ArtifactStore):
    """The real S3 store, counting the GETs of whole objects (the fetches)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def open(self, key):
        self.opened.append(key)
        return super().open(key)


@pytest.fixture(scope="module")
def client(s3_gateway):
    built = s3_client(s3_gateway)
    yield built
    built.close()


@pytest.fixture
def store(s3_gateway, client):
    return CountingStore(client, s3_gateway.bucket, f"c-{uuid.uuid4().hex[:10]}")


def put(store, key: str, data: bytes) -> StoredObject:
    stored = store.put(key, [data])
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    return stored


def test_concurrent_jobs_fetch_once_and_share_the_file(store, tmp_path):
    data = os.urandom(6 << 20)
    stored = put(store, "datasets/ds_1/set.zip", data)
    cache = FetchCache(tmp_path / "cache", 1 << 30)
    seen: list[bytes] = []
    start = threading.Barrier(6)

    def job() -> None:
        start.wait()
        with cache.use(store, stored.key, stored.sha256) as path:
            seen.append(path.read_bytes())

    threads = [threading.Thread(target=job) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.opened == [stored.key]  # six jobs, one fetch
    assert seen == [data] * 6
    with cache.use(store, stored.key, stored.sha256) as path:
        assert path == tmp_path / "cache" / "sha256" / stored.sha256
    assert store.opened == [stored.key]


def test_an_object_that_does_not_match_its_sha256_is_never_used(store, tmp_path):
    stored = put(store, "jobs/ftjob_1/model.safetensors", b"the real weights")
    put(store, "jobs/ftjob_1/model.safetensors", b"tampered with")
    cache = FetchCache(tmp_path / "cache", 1 << 30)
    with pytest.raises(CacheCorrupt, match=stored.sha256), cache.use(store, stored.key, stored.sha256):
        pass
    assert list((tmp_path / "cache" / "sha256").iterdir()) == []  # nothing half-written or wrong stays


def test_least_recently_used_entries_go_first_past_the_size(store, tmp_path):
    cache = FetchCache(tmp_path / "cache", 250_000)
    objects = {name: put(store, f"o/{name}", os.urandom(100_000)) for name in "abc"}

    def use(name: str) -> None:
        with cache.use(store, objects[name].key, objects[name].sha256) as path:
            assert path.stat().st_size == 100_000

    use("a")
    use("b")
    use("a")  # a is now more recent than b
    use("c")  # 300 kB > 250 kB: b goes
    cached = {path.name for path in (tmp_path / "cache" / "sha256").iterdir()}
    assert cached == {objects["a"].sha256, objects["c"].sha256}
    store.opened.clear()
    use("b")  # fetched again; a, now the least recent, goes
    assert store.opened == ["o/b"]
    cached = {path.name for path in (tmp_path / "cache" / "sha256").iterdir()}
    assert cached == {objects["b"].sha256, objects["c"].sha256}


def test_an_entry_in_use_is_not_evicted(store, tmp_path):
    cache = FetchCache(tmp_path / "cache", 150_000)
    first = put(store, "o/first", os.urandom(100_000))
    second = put(store, "o/second", os.urandom(100_000))
    with cache.use(store, first.key, first.sha256) as held:
        with cache.use(store, second.key, second.sha256):
            pass  # over the size: the least recent (first) is in use, so the next one goes
        assert held.is_file() and held.read_bytes() == b"".join(store.read_range(first.key, 0, first.size))
    cached = [path.name for path in (tmp_path / "cache" / "sha256").iterdir()]
    assert cached == [first.sha256]  # within its size again


def test_a_folder_store_is_read_in_place(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    stored = store.put("datasets/ds_1/set.zip", [b"zip bytes"])
    cache = FetchCache(tmp_path / "cache", 1 << 30)
    with cache.use(store, stored.key, stored.sha256) as path:
        assert path == store.root / "datasets" / "ds_1" / "set.zip"
    assert not (tmp_path / "cache").exists()
