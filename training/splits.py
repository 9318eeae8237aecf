"""Which images a run trains and validates on: a seeded subset per class, then a stratified validation
split when the data set has no val/ folder.

No torch here: the service sizes a run from class counts with ``planned_train_images`` and the engine cuts
its records with ``split_records``, both from one per-class plan (``plan_class``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.archives import resolve_source
from training.imagefolder import ImageFolderLayout, ImageRecord, scan_image_folder
from training.seeds import mixed_seed
from training.settings import EngineSettings
from training.spec import DataSpec


def val_count(n: int, fraction: float) -> int:
    """Images of a class of ``n`` held out for validation: round(fraction * n), at least one when the
    class has two or more, never all of them; none at all when ``fraction`` is 0 (no validation)."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)


@dataclass(frozen=True)
class ClassPlan:
    """What a run takes of one class of train/: ``used`` images (all, or its subset), ``val`` of them held out
    for validation (none when the data set has a val/ folder)."""

    used: int
    val: int

    @property
    def train(self) -> int:
        return self.used - self.val


def plan_class(n: int, data: DataSpec, *, has_val: bool) -> ClassPlan:
    """The plan of a class of ``n`` images of train/: ``data.subset_per_class`` first, then a stratified
    ``data.val_split`` of what is left when there is no val/ folder."""
    used = min(n, data.subset_per_class) if data.subset_per_class is not None else n
    return ClassPlan(used=used, val=0 if has_val else val_count(used, data.val_split))


def planned_train_images(train_counts: Sequence[int], data: DataSpec, *, has_val: bool) -> int:
    """Training images a run will use, from the per-class counts of train/ (as ``split_records`` cuts them)."""
    return sum(plan_class(n, data, has_val=has_val).train for n in train_counts)


def _by_class(records: Sequence[ImageRecord]) -> dict[int, list[ImageRecord]]:
    classes: dict[int, list[ImageRecord]] = {}
    for record in sorted(records, key=_record_order):
        classes.setdefault(record.label, []).append(record)
    return classes


def _record_order(record: ImageRecord) -> tuple[int, str]:
    return record.label, str(record.path)


def _draw_subset(members: list[ImageRecord], count: int, seed: int, label: int) -> list[ImageRecord]:
    """``count`` of a class's members, a seeded choice kept in their order."""
    if count >= len(members):
        return members
    rng = random.Random(mixed_seed("subset", seed, label))
    return [members[i] for i in sorted(rng.sample(range(len(members)), count))]


def _draw_val(members: list[ImageRecord], count: int, seed: int, label: int) -> set[int]:
    """The indices of the ``count`` members of a class held out for validation, a seeded choice."""
    rng = random.Random(mixed_seed("val_split", seed, label))
    return set(rng.sample(range(len(members)), count))


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
        held = _draw_val(members, val_count(len(members), fraction), seed, label)
        for i, record in enumerate(members):
            (val if i in held else train).append(record)
    return train, val


def subset_per_class(records: Sequence[ImageRecord], per_class: int, seed: int) -> list[ImageRecord]:
    """At most ``per_class`` records of each class, a seeded choice, sorted by (label, path)."""
    subset: list[ImageRecord] = []
    for label, members in _by_class(records).items():
        subset.extend(_draw_subset(members, per_class, seed, label))
    return subset


def split_records(
    spec_data: DataSpec, *, source: Path, work_dir: Path, seed: int, settings: EngineSettings
) -> tuple[ImageFolderLayout, list[ImageRecord], list[ImageRecord] | None]:
    """The layout, and the train and validation records a run of ``spec_data`` uses (seeded), cut per class
    as ``plan_class`` plans; no validation records when the archive has no val/ and ``val_split`` is 0."""
    layout = scan_image_folder(resolve_source(source, work_dir, settings))
    has_val = layout.val is not None
    train: list[ImageRecord] = []
    held_out: list[ImageRecord] = []
    for label, members in _by_class(layout.train).items():
        plan = plan_class(len(members), spec_data, has_val=has_val)
        used = _draw_subset(members, plan.used, seed, label)
        held = _draw_val(used, plan.val, seed, label)
        for i, record in enumerate(used):
            (held_out if i in held else train).append(record)
    if has_val:
        return layout, train, layout.val
    return layout, train, held_out if spec_data.val_split > 0 else None
