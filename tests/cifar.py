"""The real CIFAR-10 data set, for tests that need real images: the archive, and seeded subsets of it.

The archive is ``$FT_SHARED_DATA/cifar10-jpg.tar.gz`` (default ``<repo>/../shared/data``), in ImageFolder
layout: ``train/<class>/NNNN.jpg`` (5,000 per class) and ``test/<class>/NNNN.jpg`` (1,000 per class),
32x32 RGB JPEG. A test that needs it fails, naming the path, when it is missing: it is never skipped.
"""

from __future__ import annotations

import os
import random
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_NAME = "cifar10-jpg.tar.gz"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGES_PER_CLASS = {"train": 5000, "test": 1000}


def cifar_archive() -> Path:
    """The CIFAR-10 JPEG archive; fails the calling test when it is missing."""
    folder = Path(os.environ.get("FT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    path = folder / ARCHIVE_NAME
    if not path.is_file():
        pytest.fail(
            f"CIFAR-10 archive not found at {path}: set FT_SHARED_DATA to the folder that holds "
            f"{ARCHIVE_NAME} (default: <repo>/../shared/data)",
            pytrace=False,
        )
    return path


def _chosen_members(splits: Sequence[str], per_split: dict[str, int], seed: int) -> set[str]:
    chosen: set[str] = set()
    for split in splits:
        if split not in IMAGES_PER_CLASS:
            raise ValueError(f"CIFAR-10 has splits {sorted(IMAGES_PER_CLASS)}, not {split!r}")
        for name in CIFAR10_CLASSES:
            rng = random.Random(f"cifar:{seed}:{split}:{name}")
            picks = rng.sample(range(IMAGES_PER_CLASS[split]), per_split[split])
            chosen.update(f"{split}/{name}/{index:04d}.jpg" for index in picks)
    return chosen


def make_cifar_subset(
    dest: Path,
    per_class: int,
    seed: int = 0,
    splits: Sequence[str] = ("train", "test"),
    test_per_class: int | None = None,
) -> Path:
    """An ImageFolder tree at ``dest`` of a seeded subset of CIFAR-10: ``per_class`` train images per class
    and ``test_per_class`` (default ``per_class``) test images per class, for the ``splits`` asked.

    The archive is read once, streaming, and only the chosen members are written.
    """
    per_split = {"train": per_class, "test": per_class if test_per_class is None else test_per_class}
    wanted = _chosen_members(splits, per_split, seed)
    remaining = set(wanted)
    with tarfile.open(cifar_archive(), mode="r|gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name not in remaining or not member.isreg():
                continue
            source = tar.extractfile(member)
            assert source is not None
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
            remaining.discard(name)
            if not remaining:
                break  # the archive holds train/ before test/: a train-only subset stops early
    if remaining:
        pytest.fail(f"{ARCHIVE_NAME} lacks {len(remaining)} expected members, e.g. {sorted(remaining)[:3]}")
    return dest
