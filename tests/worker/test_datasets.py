"""Extracted data sets on a worker's disk: one extraction at a time per data set, across processes (a file
lock), and a bounded cache that evicts the least recently used extraction no job is training from."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app.context import Runtime
from app.repositories import datasets
from tests.worker.conftest import read, upload_ready_dataset
from worker.datasets import extracted_dataset


def dataset_of(services: Runtime, dataset_id: str) -> Any:
    row = read(services, datasets.get_any, dataset_id)
    return SimpleNamespace(id=row.id, store_key=row.store_key, sha256=row.sha256, filename=row.filename)


def use_and_report(services: Runtime, dataset: Any, go: Any, answers: Any) -> None:
    """In a child process: the extracted folder, and the inode of its extraction's marker (a new extraction
    writes a new marker)."""
    go.wait(60)
    with extracted_dataset(services.store, services.settings, dataset) as folder:
        marker = folder.with_name(f".{folder.name}.extracted.json")
        answers.put((str(folder), marker.stat().st_ino, sorted(p.name for p in folder.iterdir())))


def test_two_processes_never_extract_one_data_set_at_once(services, colour_archive):
    dataset = dataset_of(services, upload_ready_dataset(services, colour_archive))
    work = services.settings.data_path / "datasets" / dataset.id
    shutil.rmtree(work)  # the validation's extraction is gone: the next use extracts it again
    lock = services.settings.data_path / "datasets" / ".locks" / f"{dataset.id}.extract"
    lock.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    go, answers = context.Event(), context.Queue()
    children = [context.Process(target=use_and_report, args=(services, dataset, go, answers)) for _ in range(2)]
    for child in children:
        child.start()  # before the lock below is taken: a forked child would inherit it
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # someone else is extracting it
    go.set()
    try:
        assert answers.empty()
        children[0].join(1.5)
        assert answers.empty() and not work.exists()  # both wait for the lock: neither has begun
    finally:
        os.close(held)
    got = [answers.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert got[0] == got[1]  # one extraction (one marker), used by both
    assert Path(got[0][0]).is_dir() and got[0][2]


def test_extractions_are_a_bounded_cache_that_never_evicts_one_in_use(services, colour_archive):
    tight = Runtime.from_settings(services.settings.model_copy(update={"dataset_cache_max_bytes": 1}))
    try:
        first = dataset_of(tight, upload_ready_dataset(tight, colour_archive))
        second = dataset_of(tight, upload_ready_dataset(tight, colour_archive))
        root = tight.settings.data_path / "datasets"
        with (
            extracted_dataset(tight.store, tight.settings, first) as first_folder,
            extracted_dataset(tight.store, tight.settings, second) as second_folder,
        ):
            assert first_folder.is_dir() and second_folder.is_dir()  # over the bound, but both in use
        with extracted_dataset(tight.store, tight.settings, second):
            pass  # the least recently used one, no longer in use, goes
        assert not (root / first.id).exists() and (root / second.id).is_dir()
        with extracted_dataset(tight.store, tight.settings, first) as again:
            assert any(again.iterdir())  # extracted anew from the store's archive
        assert not (root / second.id).exists()
    finally:
        tight.close()
