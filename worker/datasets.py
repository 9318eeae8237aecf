"""A worker's extracted data sets: a bounded cache on its disk, one lock per data set.

A ready data set is extracted under ``data/datasets/<id>`` (``app.services.datasets.dataset_work_dir``)
the first time a job on this host trains from it, and reused after. Two lock files per data set, under
``data/datasets/.locks`` (``flock``: across processes, released by the kernel when a process dies):

- ``<id>.extract``, exclusive while a job extracts (or checks) the data set: a second job on this host,
  in any process, waits for the first and then reuses its extraction instead of extracting it again;
- ``<id>.use``, shared while a job trains from it: eviction takes it exclusively, without waiting, so it
  never removes a data set a job is using.

Past ``FT_DATASET_CACHE_MAX_BYTES`` the least recently used extractions that no job is using are removed
(their archives stay in the store; a later job extracts them again).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from app.db.models import Dataset
from app.services.dataset_validation import dataset_folder
from app.settings import Settings
from app.store import ArtifactStore

log = logging.getLogger(__name__)


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


@contextlib.contextmanager
def extracted_dataset(store: ArtifactStore, settings: Settings, dataset: Dataset) -> Iterator[Path]:
    """The data set's extracted folder while the block runs (kept from eviction meanwhile)."""
    root = settings.data_path / "datasets"
    locks = root / ".locks"
    use = _open(locks / f"{dataset.id}.use")
    try:
        fcntl.flock(use, fcntl.LOCK_SH)  # in use from here on: eviction passes it by
        extract = _open(locks / f"{dataset.id}.extract")
        try:
            fcntl.flock(extract, fcntl.LOCK_EX)  # one extraction per data set per host at a time
            folder = dataset_folder(store, settings, dataset)
            size = locks / f"{dataset.id}.bytes"
            if not size.is_file():
                size.write_text(str(_folder_bytes(root / dataset.id)))
        finally:
            os.close(extract)
        now = time.time_ns()
        os.utime(locks / f"{dataset.id}.use", ns=(now, now))  # used now: the last to be evicted
        evict(settings, keep=dataset.id)
        yield folder
    finally:
        os.close(use)


def evict(settings: Settings, keep: str | None = None) -> list[str]:
    """Remove least recently used extractions (never ``keep``, never one in use) until they fit
    ``dataset_cache_max_bytes``; the ids removed."""
    locks = settings.data_path / "datasets" / ".locks"
    entries = []
    for size_file in locks.glob("*.bytes"):
        dataset_id = size_file.name.removesuffix(".bytes")
        with contextlib.suppress(OSError, ValueError):
            used = (locks / f"{dataset_id}.use").stat().st_mtime_ns
            entries.append((used, int(size_file.read_text()), dataset_id))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, dataset_id in sorted(entries):
        if total <= settings.dataset_cache_max_bytes:
            break
        if dataset_id == keep:
            continue
        fd = _open(locks / f"{dataset_id}.use")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a job is training from it
            (locks / f"{dataset_id}.bytes").unlink(missing_ok=True)
            shutil.rmtree(settings.data_path / "datasets" / dataset_id, ignore_errors=True)
        finally:
            os.close(fd)
        total -= size
        removed.append(dataset_id)
        log.info("evicted the extracted data set %s (%d bytes) from this host's cache", dataset_id, size)
    return removed
