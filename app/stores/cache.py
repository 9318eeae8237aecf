"""A worker's cache of objects fetched from a remote store: data set archives and ``init_from`` weights.

Files are named by their sha256 (``<root>/sha256/<hex>``), so a data set uploaded twice, or the weights of
one job used by many, are fetched once per host. A fetch holds an exclusive lock on that entry (``flock``
on ``<root>/locks/<hex>``): concurrent jobs on one host wait for the first fetch and then share its file.
A file whose bytes do not hash to their name is deleted, never used. Past ``max_bytes`` the least recently
used entries go first (a use touches the entry's lock file), never one in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from app.store import CHUNK_BYTES, ArtifactStore

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CacheCorrupt(OSError):
    """The store's object does not hash to the sha256 the database recorded for it."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes, or the process dies
        yield
    finally:
        os.close(fd)


class FetchCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.files = root / "sha256"
        self.locks = root / "locks"

    @contextlib.contextmanager
    def use(self, store: ArtifactStore, key: str, sha256: str) -> Iterator[Path]:
        """A local file with the object's bytes while the block runs: the store's own file when the store
        is a folder, else the cached copy, fetched first when this host has none. The entry is locked
        shared while in use (eviction passes it by) and exclusively while it is fetched."""
        local = store.local_path(key)
        if local is not None:
            yield local
            return
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        entry = self.files / sha256
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks / sha256, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not entry.is_file():
                fcntl.flock(fd, fcntl.LOCK_EX)  # one fetch per host: the others wait here, then find it
                if not entry.is_file():
                    self._fetch(store, key, sha256, entry)
                fcntl.flock(fd, fcntl.LOCK_SH)
            now = time.time_ns()  # not the kernel's coarse clock, which gives uses a few ms apart one time
            os.utime(
                self.locks / sha256, ns=(now, now)
            )  # used now: the last to be evicted (the entry's own mtime stays)
            yield entry
        finally:
            os.close(fd)
        self.evict()

    def _fetch(self, store: ArtifactStore, key: str, sha256: str, entry: Path) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_name(f".{sha256}.{os.getpid()}.partial")
        digest = hashlib.sha256()
        try:
            with store.open(key) as source, partial.open("wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise CacheCorrupt(f"{store.url}/{key}: its sha256 is {digest.hexdigest()}, recorded {sha256}")
            partial.replace(entry)
        finally:
            partial.unlink(missing_ok=True)
        log.info("fetched %s (%d bytes) into the cache", key, entry.stat().st_size)

    def evict(self) -> list[str]:
        """Delete least recently used entries until the cache fits ``max_bytes``; returns their sha256s.
        An entry in use or being fetched (its lock held) is left alone."""
        with _locked(self.locks / ".evict"):
            entries = []
            for path in self.files.glob("*") if self.files.is_dir() else []:
                if _SHA256.match(path.name):
                    lock = self.locks / path.name
                    used = lock.stat().st_mtime_ns if lock.exists() else 0
                    entries.append((used, path.stat().st_size, path))
            total = sum(size for _, size, _ in entries)
            removed = []
            for _, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                if not self._try_remove(path):
                    continue
                total -= size
                removed.append(path.name)
            return removed

    def _try_remove(self, path: Path) -> bool:
        fd = os.open(self.locks / path.name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use or being fetched right now
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
