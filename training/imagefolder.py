"""The ImageFolder layout: train/ (with optional val/ and test/) or class folders, scanned into records.

No torch here. Problems come back together as one ``DatasetError`` whose lines name the folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import DatasetError

_invalid = DatasetError.invalid

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_MAX_WRAPPER_FOLDERS = 3


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int


@dataclass
class ImageFolderLayout:
    root: Path  # the folder that holds train/ (or the class folders)
    class_names: list[str]  # sorted, index = label
    train: list[ImageRecord]
    val: list[ImageRecord] | None  # None when there is no val/ folder
    test: list[ImageRecord] | None
    skipped: list[str] = field(default_factory=list)  # non-image files ignored, relative paths


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _visible(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if not _is_hidden(child.name))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _split_folders(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in _visible(root):
        split = SPLIT_FOLDERS.get(child.name)
        if split is not None and child.is_dir() and split not in found:
            found[split] = child
    return found


def _look_through_wrappers(root: Path) -> Path:
    """Step into a single folder that wraps the data set (root/cifar10/train/...)."""
    for _ in range(_MAX_WRAPPER_FOLDERS):
        if "train" in _split_folders(root):
            return root
        children = _visible(root)
        folders = [child for child in children if child.is_dir()]
        has_images = any(child.is_file() and _is_image(child) for child in children)
        if len(folders) != 1 or has_images or not any(c.is_dir() for c in _visible(folders[0])):
            return root
        root = folders[0]
    return root


def _images_under(class_dir: Path, root: Path, skipped: list[str]) -> list[str]:
    """Image files anywhere under ``class_dir``, relative to ``root``; other files go to ``skipped``."""
    images: list[str] = []
    for folder, subfolders, files in os.walk(class_dir):
        subfolders[:] = [name for name in subfolders if not _is_hidden(name)]
        base = Path(folder)
        for name in files:
            if _is_hidden(name):
                continue
            relative = (base / name).relative_to(root).as_posix()
            (images if _is_image(Path(name)) else skipped).append(relative)
    return images


def _class_folders(split_dir: Path, root: Path, skipped: list[str]) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for child in _visible(split_dir):
        if child.is_dir():
            folders[child.name] = child
        else:
            skipped.append(child.relative_to(root).as_posix())
    return folders


def _records(
    folders: dict[str, Path], labels: dict[str, int], root: Path, skipped: list[str], where: str
) -> tuple[list[ImageRecord], list[str]]:
    found: list[tuple[int, str]] = []
    problems: list[str] = []
    for name, folder in folders.items():
        images = _images_under(folder, root, skipped)
        if not images:
            problems.append(f"class '{name}' has no images ({where}{name}/)")
        found.extend((labels[name], relative) for relative in images)
    found.sort()
    return [ImageRecord(root / relative, label) for label, relative in found], problems


def _class_difference(split: str, names: set[str], train_names: set[str]) -> list[str]:
    problems = []
    if missing := sorted(train_names - names):
        problems.append(f"{split}/ is missing classes that train/ has: {', '.join(missing)}")
    if extra := sorted(names - train_names):
        problems.append(f"{split}/ has classes that train/ does not: {', '.join(extra)}")
    return problems


def scan_image_folder(root: Path) -> ImageFolderLayout:
    """The ImageFolder layout under ``root``: train/ with optional val/ and test/, or class folders directly.

    One wrapping folder (root/cifar10/train/...) is looked through. Images are found recursively in each
    class folder; other files are listed in ``skipped``. Records are sorted by (label, relative path).
    """
    if not root.is_dir():
        raise _invalid(f"data.path: {root} is not a folder")
    root = _look_through_wrappers(root)
    skipped: list[str] = []
    splits = _split_folders(root)
    if "train" in splits:
        split_dirs = {name: splits[name] for name in ("train", "val", "test") if name in splits}
        used = set(split_dirs.values())
        for child in _visible(root):
            if child not in used:
                skipped.append(child.relative_to(root).as_posix() + ("/" if child.is_dir() else ""))
    else:
        split_dirs = {"train": root}
    folders = {split: _class_folders(folder, root, skipped) for split, folder in split_dirs.items()}
    class_names = sorted(folders["train"])
    labels = {name: index for index, name in enumerate(class_names)}
    train_where = "" if split_dirs["train"] == root else f"{split_dirs['train'].name}/"
    problems: list[str] = []
    if len(class_names) < 2:
        problems.append(_too_few_classes(class_names, root, train_where))
    train, train_problems = _records(folders["train"], labels, root, skipped, train_where)
    problems += train_problems
    others: dict[str, list[ImageRecord]] = {}
    for split in ("val", "test"):
        if split not in folders:
            continue
        where = f"{split_dirs[split].name}/"
        difference = _class_difference(split_dirs[split].name, set(folders[split]), set(class_names))
        problems += difference
        known = {name: folder for name, folder in folders[split].items() if name in labels}
        others[split], split_problems = _records(known, labels, root, skipped, where)
        problems += split_problems
    if class_names and not train:
        problems.append(f"no images found under {root}")
    if problems:
        raise _invalid(*problems)
    return ImageFolderLayout(root, class_names, train, others.get("val"), others.get("test"), sorted(skipped))


def _too_few_classes(class_names: list[str], root: Path, where: str) -> str:
    layout = "train/<class>/<image> (with optional val/ and test/) or <class>/<image>"
    if not class_names:
        return f"no class folders found in {root}: expected {layout}"
    return (
        f"only one class folder ({where}{class_names[0]}/): a classifier needs at least two classes, "
        "one folder per class"
    )


def display_root(records: Sequence[ImageRecord]) -> Path:
    """A folder to name files from when none is given: one above the folders the records share."""
    if not records:
        return Path()
    common = Path(os.path.commonpath([str(record.path.parent) for record in records]))
    return common.parent


def display_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
