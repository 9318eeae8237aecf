"""The check of an uploaded data set: extracted, its layout found, every image decoded.

No torch here: the service runs it (in a child process with limits, ``training.isolated``) before a data
set is marked ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.archives import resolve_source
from training.decoding import check_images
from training.errors import DatasetError
from training.imagefolder import scan_image_folder
from training.settings import EngineSettings

MAX_LISTED_PROBLEMS = 50


@dataclass
class DatasetReport:
    """What the service shows of an uploaded data set after validation."""

    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    num_images: int
    skipped: list[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "class_names": list(self.class_names),
            "counts": {split: dict(per_class) for split, per_class in self.counts.items()},
            "num_images": self.num_images,
            "skipped": list(self.skipped),
        }


def validate_dataset(path: Path, work_dir: Path, settings: EngineSettings) -> DatasetReport:
    """The full check of an uploaded data set: extract, find the layout, decode every image.

    Raises DatasetError with every problem found (the first ``MAX_LISTED_PROBLEMS`` listed).
    """
    layout = scan_image_folder(resolve_source(path, work_dir, settings))
    splits = {"train": layout.train, "val": layout.val, "test": layout.test}
    present = {name: records for name, records in splits.items() if records is not None}
    everything = [record for records in present.values() for record in records]
    problems = check_images(everything, settings, decode=True, root=layout.root)
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"and {len(problems) - len(listed)} more files with problems")
        raise DatasetError("dataset_unreadable", listed)
    counts = {
        split: {name: sum(r.label == label for r in records) for label, name in enumerate(layout.class_names)}
        for split, records in present.items()
    }
    return DatasetReport(layout.class_names, counts, len(everything), layout.skipped)
