"""The artifact store: data set archives, checkpoints, weights and model cards, by key.

A small interface (put a stream, open a stream or a byte range, stat, delete, move) with two
implementations chosen by ``FT_STORE_URL`` (``app.stores.store_for``): this local folder (``file://``, the
embedded default) and an S3 bucket (``s3://``, ``app.stores.s3``). Keys are relative POSIX paths such as
``jobs/ftjob_.../model.safetensors``. The local store writes atomically (a temporary file in the same
folder, fsync, rename, fsync of the folder) and computes the sha256 while it writes: a reader never sees
half a file, and every file has its checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

CHUNK_BYTES = 1 << 20
PARTIAL = ".partial"  # the local store's file being written: .{name}.{random}.partial beside its target
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class InvalidKey(ValueError):
    """A key that could name something outside the store."""


class ObjectMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: float  # unix seconds


class ObjectWriter(Protocol):
    """An object being written: ``write`` chunks, then ``commit`` (or ``abort``, which leaves nothing)."""

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> StoredObject: ...
    def abort(self) -> None: ...
    @property
    def size(self) -> int: ...


class ArtifactStore(Protocol):
    @property
    def url(self) -> str: ...  # where it is, for logs and messages (file:///..., s3://bucket/prefix)
    def writer(self, key: str) -> ObjectWriter: ...
    def put(self, key: str, stream: BinaryIO | Iterable[bytes]) -> StoredObject: ...
    def put_file(self, key: str, path: Path) -> StoredObject: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_range(self, key: str, start: int, length: int) -> Iterator[bytes]: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def delete(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def move(self, source: str, target: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
    def presigned_url(self, key: str, *, filename: str, expires_seconds: int) -> str | None: ...
    def check(self) -> None: ...
    def abort_abandoned_writes(self, older_than: timedelta) -> list[str]: ...


def validate_key(key: str) -> list[str]:
    """The parts of a well-formed key; InvalidKey for anything else ('..', absolute, odd characters)."""
    parts = key.split("/")
    if not key or len(key) > 512 or not all(_KEY_PART.match(part) for part in parts):
        raise InvalidKey(f"invalid store key {key!r}: use relative paths of letters, digits, '.', '_' and '-'")
    if any(part in (".", "..") for part in parts):
        raise InvalidKey(f"invalid store key {key!r}: '.' and '..' are not allowed")
    return parts


def chunks_of(stream: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """A file's bytes (or an iterable's) in blocks of at most CHUNK_BYTES."""
    read = getattr(stream, "read", None)
    if read is None:
        yield from stream
        return
    while chunk := read(CHUNK_BYTES):
        yield chunk


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalWriter:
    def __init__(self, target: Path, key: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._key = key
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent)
        self._temp = Path(temp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self) -> StoredObject:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._temp.replace(self._target)
        _fsync_dir(self._target.parent)
        self._done = True
        return StoredObject(self._key, self._size, self._hash.hexdigest())

    def abort(self) -> None:
        if not self._done:
            self._file.close()
            self._temp.unlink(missing_ok=True)
            self._done = True

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()  # after commit this does nothing


class LocalArtifactStore:
    """Files under one folder (shared between API and workers in production: a mounted volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key))
        if not path.resolve().is_relative_to(self.root):  # a symlink inside the store pointing out of it
            raise InvalidKey(f"invalid store key {key!r}: it resolves outside the store")
        return path

    def writer(self, key: str) -> _LocalWriter:
        return _LocalWriter(self._path(key), key)

    def put(self, key: str, stream: BinaryIO | Iterable[bytes]) -> StoredObject:
        with self.writer(key) as writer:
            for chunk in chunks_of(stream):
                writer.write(chunk)
            return writer.commit()

    def put_file(self, key: str, path: Path) -> StoredObject:
        """A local file's bytes under ``key``: hard-linked into the store when it is on the store's filesystem
        (no copy: a worker's checkpoints and weights, written beside the store), else copied as ``put`` does.
        The file must never be rewritten in place afterwards (files written atomically, by rename, never are).
        Atomic and durable as ``put``: the file is fsynced, linked under a temporary name, hashed, renamed."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.urandom(6).hex()}{PARTIAL}")
        try:
            os.link(path, temp)
        except OSError:  # another filesystem (EXDEV), or one without hard links: a copy
            with path.open("rb") as file:
                return self.put(key, file)
        try:
            digest, size = hashlib.sha256(), 0
            with temp.open("rb") as file:
                os.fsync(file.fileno())  # the bytes durable before the name is (nothing to flush if they are)
                while chunk := file.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            temp.replace(target)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return StoredObject(key, size, digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def read_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        """``length`` bytes from ``start``, in blocks (a download's Range)."""
        with self.open(key) as file:
            file.seek(start)
            left = length
            while left > 0 and (chunk := file.read(min(CHUNK_BYTES, left))):
                left -= len(chunk)
                yield chunk

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and time of an object, None when there is none (its sha256 is in the database)."""
        path = self._path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, info.st_size, info.st_mtime) if path.is_file() else None

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            _fsync_dir(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/`` (a data set's or a job's folder)."""
        folder = self._path(prefix)
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        folder.rmdir()

    def move(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target`` (atomic: a reader sees the old target or the new, never half)."""
        path, dest = self._path(source), self._path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.replace(dest)
        except FileNotFoundError:
            raise ObjectMissing(source) from None
        _fsync_dir(dest.parent)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, *, filename: str, expires_seconds: int) -> None:
        return None  # a folder has no URL of its own: the API streams the file

    def abort_abandoned_writes(self, older_than: timedelta) -> list[str]:
        """Remove the temporary files of writes that a process killed mid-write left behind: those not
        written to for ``older_than`` (a write in progress keeps its file's time fresh). The keys they were
        to become."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than.total_seconds()
        removed = []
        for path in self.root.rglob(f".*{PARTIAL}"):
            with contextlib.suppress(FileNotFoundError):  # a write that ended meanwhile
                if not path.is_file() or path.is_symlink() or path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
                target = path.name[1:].removesuffix(PARTIAL).rsplit(".", 1)[0]  # mkstemp's random part has no dot
                removed.append(path.parent.joinpath(target).relative_to(self.root).as_posix())
        return sorted(removed)

    def check(self) -> None:
        """Raise OSError unless the store is writable (readiness)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".readyz.", delete=True) as probe:
            probe.write(b"ok")
            probe.flush()
