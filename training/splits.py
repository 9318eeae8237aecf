"""Which images a run trains and validates on: a seeded subset per class, then a stratified validation
split when the data set has no val/ folder.

No torch here: the service sizes a run from class counts with ``planned_train_images`` and the engine cuts
its records with ``split_records``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from training.archives import resolve_source
from training.imagefolder import ImageFolderLayout, ImageRecord, scan_image_folder
from training.seeds import mixed_seed
from training.settings import EngineSettings
from training.spec import DataSpec


def _by_class(records: Sequence[ImageRecord]) -> dict[int, list[ImageRecord]]:
    classes: dict[int, list[ImageRecord]] = {}
    for record in sorted(records, key=_record_order):
        classes.setdefault(record.label, []).append(record)
    return classes


def _record_order(record: ImageRecord) -> tuple[int, str]:
    return record.label, str(record.path)


def val_count(n: int, fraction: float) -> int:
    """Images of a class of ``n`` held out for validation: round(fraction * n), at least one when the
    class has two or more, never all of them; none at all when ``fraction`` is 0 (no validation)."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)


def planned_train_images(
    train_counts: Sequence[int], *, has_val: bool, val_split: float, subset_per_class: int | None
) -> int:
    """Training images a run will use, from the per-class counts of train/ (as ``load_data`` cuts them)."""
    total = 0
    for n in train_counts:
        n = min(n, subset_per_class) if subset_per_class is not None else n
        total += n if has_val else n - val_count(n, val_split)
    return total


def stratified_split(
    records: Sequence[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, val): a seeded ``fraction`` of each class goes to val.

    Per class: round(fraction * n) images, at least one when the class has two or more, never all of them.
    Each class draws from its own seed, so a class's split does not depend on the others.
    """
    train: list[ImageRecord] = []
    val: list[ImageRecord] = []
    for label, members in _by_class(records).items():
        n = len(members)
        n_val = val_count(n, fraction)
        rng = random.Random(mixed_seed("val_split", seed, label))
        chosen = set(rng.sample(range(n), n_val))
        for i, record in enumerate(members):
            (val if i in chosen else train).append(record)
    return train, val


def subset_per_class(records: Sequence[ImageRecord], per_class: int, seed: int) -> list[ImageRecord]:
    """At most ``per_class`` records of each class, a seeded choice, sorted by (label, path)."""
    subset: list[ImageRecord] = []
    for label, members in _by_class(records).items():
        rng = random.Random(mixed_seed("subset", seed, label))
        chosen = sorted(rng.sample(range(len(members)), min(per_class, len(members))))
        subset.extend(members[i] for i in chosen)
    return subset


def split_records(
    spec_data: DataSpec, *, source: Path, work_dir: Path, seed: int, settings: EngineSettings
) -> tuple[ImageFolderLayout, list[ImageRecord], list[ImageRecord] | None]:
    """The layout, and the train and validation records a run of ``spec_data`` uses (seeded); no validation
    records when the archive has no val/ and ``val_split`` is 0."""
    layout = scan_image_folder(resolve_source(source, work_dir, settings))
    train = layout.train
    if spec_data.subset_per_class is not None:
        train = subset_per_class(train, spec_data.subset_per_class, seed)
    val = layout.val
    if val is None and spec_data.val_split > 0:
        train, val = stratified_split(train, spec_data.val_split, seed)
    return layout, train, val
