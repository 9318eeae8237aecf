"""Data sets: safe archive extraction, the ImageFolder layout, image checks, splits and batch loading.

Two halves. The first finds and checks a data set the way a person uploads it (an archive or a folder
in ImageFolder layout) and says what is wrong with it in lines that name the files. The second turns
the records into batches of uint8 images on the training device:

- ``InMemoryImages`` decodes every image once into one ``(N, 3, S, S)`` uint8 tensor and augments whole
  batches on the device, with no Python work per image and no host syncs in ``batches``;
- ``StreamingImages`` decodes from disk in ``DataLoader`` worker processes, for sets too big to hold.

Every random choice is seeded from the run's seed, the epoch and the batch (or image) index, so a batch
is the same on any device, with any number of workers, and after a resume that skips into an epoch.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import math
import os
import random
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from training.errors import TrainingError
from training.settings import EngineSettings
from training.spec import AugmentSpec, DataSpec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED_PROBLEMS = 50

MIB = 1 << 20
_COPY_CHUNK = MIB
# Entries smaller than this are never refused for their compression ratio: a blank BMP or a text file
# legitimately compresses a few hundred times. The total-size limit still bounds them all.
_RATIO_MIN_BYTES = MIB
_MAX_WRAPPER_FOLDERS = 3
_DECODE_CHUNK = 64  # images per thread task: tiny images are dominated by per-task overhead
_THREADED_MIN_SECONDS = 0.0005  # per image, below which decoding threads only contend for the GIL
_RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_MIN_STD = 1.0 / 255.0  # a constant channel would otherwise normalize to inf


class DatasetError(TrainingError):
    """A data set that cannot be used; ``problems`` are one-line reasons a person can act on, naming files.

    ``code`` is ``dataset_invalid`` (layout, classes, unsafe archive) or ``dataset_unreadable`` (images that
    do not decode).
    """

    def __init__(self, code: str, problems: list[str]) -> None:
        self.problems = list(problems) or ["the data set cannot be used"]
        shown = "; ".join(self.problems[:3])
        more = len(self.problems) - 3
        super().__init__(f"{shown} (and {more} more)" if more > 0 else shown, code=code)


def _invalid(*problems: str) -> DatasetError:
    return DatasetError("dataset_invalid", list(problems))


# --- records and layout ------------------------------------------------------------------------


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


# --- archives ----------------------------------------------------------------------------------


class _ExtractBudget:
    """Counts entries and bytes as they are written, and refuses the archive once a limit is crossed."""

    def __init__(self, archive: Path, settings: EngineSettings) -> None:
        self.archive = archive.name
        self.max_entries = settings.extract_max_files
        self.max_bytes = settings.extract_max_mb * MIB
        self.max_ratio = settings.extract_max_ratio
        self.entries = 0
        self.written = 0

    def count_entries(self, count: int = 1) -> None:
        self.entries += count
        if self.entries > self.max_entries:
            raise _invalid(f"{self.archive}: more than {self.max_entries} entries (the limit is FT_EXTRACT_MAX_FILES)")

    def check_declared_total(self, total: int) -> None:
        if total > self.max_bytes:
            raise self._too_big(total)

    def add(self, entry: str, written_in_entry: int, compressed: int | None, size: int) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise self._too_big(self.written)
        if compressed is not None:
            self.check_ratio(entry, written_in_entry, compressed)

    def check_ratio(self, entry: str, size: int, compressed: int) -> None:
        if size > _RATIO_MIN_BYTES and size > self.max_ratio * max(compressed, 1):
            raise _invalid(
                f"{self.archive}: entry {entry} expands more than {self.max_ratio} times "
                f"({compressed} bytes to over {size}); refused as a possible zip bomb (FT_EXTRACT_MAX_RATIO)"
            )

    def _too_big(self, size: int) -> DatasetError:
        return _invalid(
            f"{self.archive}: extracts to more than {self.max_bytes // MIB} MiB "
            f"(at least {size / MIB:.1f} MiB; the limit is FT_EXTRACT_MAX_MB)"
        )


def _entry_parts(archive: str, name: str) -> list[str] | None:
    """The path of an archive entry inside the destination, as parts; None for an entry to ignore."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _invalid(f"{archive}: entry {name} has an absolute path; refused")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"{archive}: entry {name} points outside the archive ('..'); refused")
    if not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
        return None
    return parts


def _special_file_problem(archive: str, name: str, mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return f"{archive}: entry {name} is a symbolic link; refused"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return f"{archive}: entry {name} is a device file or pipe; refused"
    return None


def _write_entry(source: IO[bytes], target: Path, entry: str, budget: _ExtractBudget, compressed: int | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)
            written += len(chunk)
            budget.add(entry, written, compressed, len(chunk))


def _extract_zip(archive: Path, staging: Path, budget: _ExtractBudget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        budget.count_entries(len(infos))
        budget.check_declared_total(sum(info.file_size for info in infos))
        for info in infos:
            problem = _special_file_problem(archive.name, info.filename, info.external_attr >> 16)
            if problem:
                raise _invalid(problem)
            parts = _entry_parts(archive.name, info.filename)
            if parts is None:
                continue
            target = staging.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.check_ratio(info.filename, info.file_size, info.compress_size)
            with zf.open(info) as source:
                _write_entry(source, target, info.filename, budget, info.compress_size)


def _extract_tar(archive: Path, staging: Path, budget: _ExtractBudget) -> None:
    # Stream mode: one pass over a compressed tar, members read in order, nothing seeks back.
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            budget.count_entries()
            if member.issym() or member.islnk():
                raise _invalid(f"{archive.name}: entry {member.name} is a link (to {member.linkname}); refused")
            if member.ischr() or member.isblk() or member.isfifo():
                raise _invalid(f"{archive.name}: entry {member.name} is a device file or pipe; refused")
            parts = _entry_parts(archive.name, member.name)
            if parts is None:
                continue
            target = staging.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member) if member.isreg() else None
            if source is None:
                raise _invalid(f"{archive.name}: entry {member.name} is not a regular file or folder; refused")
            with source:
                _write_entry(source, target, member.name, budget, compressed=None)


def _is_zip(archive: Path) -> bool:
    with archive.open("rb") as file:
        magic = file.read(4)
    return magic in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(archive)


def _open_as_tar(archive: Path) -> None:
    """Raise DatasetError when the file is not a tar archive (plain or compressed)."""
    try:
        with tarfile.open(archive, mode="r|*"):
            pass
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise _invalid(f"{archive.name}: not a zip or tar archive ({error})") from None


_CORRUPT_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    EOFError,
    NotImplementedError,  # a zip compression method Python lacks
    RuntimeError,  # an encrypted zip entry
)


def safe_extract(archive: Path, dest: Path, settings: EngineSettings) -> Path:
    """Extract a .zip, .tar or compressed tar into ``dest`` (created, or empty), refusing anything unsafe.

    Refused, naming the entry: absolute paths, '..', symlinks and hard links, device files and pipes, more
    than ``extract_max_files`` entries, more than ``extract_max_mb`` written, a zip entry above
    ``extract_max_ratio``. Bytes are counted as written, not taken from headers. The archive extracts into a
    staging folder beside ``dest`` that is deleted when anything goes wrong, so ``dest`` is never half-full.
    ``__MACOSX/`` and names starting with '.' are left out.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} exists and is not an empty folder")
    is_zip = _is_zip(archive)
    if not is_zip:
        _open_as_tar(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    budget = _ExtractBudget(archive, settings)
    try:
        try:
            (_extract_zip if is_zip else _extract_tar)(archive, staging, budget)
        except _CORRUPT_ARCHIVE_ERRORS as error:
            raise _invalid(f"{archive.name}: the archive is corrupt or truncated ({error})") from None
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as error:
            raise _invalid(f"{archive.name}: entries clash, a file and a folder share a path ({error})") from None
        staging.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _archive_stem(name: str) -> str:
    lowered = name.lower()
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip"):
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = name.lstrip(".")
    return name or "dataset"


def resolve_source(path: Path, work_dir: Path, settings: EngineSettings) -> Path:
    """The folder a data set is read from: ``path`` itself, or the archive extracted once under ``work_dir``.

    An extraction is reused while its marker file (beside it) records the archive's path, size and mtime.
    """
    if not path.exists():
        raise _invalid(f"data.path: {path} does not exist")
    if path.is_dir():
        return path
    info = path.stat()
    key = {"archive": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    dest = work_dir / _archive_stem(path.name)
    marker = work_dir / f".{dest.name}.extracted.json"
    with contextlib.suppress(OSError, ValueError):
        if dest.is_dir() and json.loads(marker.read_text()) == key:
            return dest
    marker.unlink(missing_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    safe_extract(path, dest, settings)
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(json.dumps(key))
    partial.replace(marker)
    return dest


# --- layout ------------------------------------------------------------------------------------


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


# --- image checks ------------------------------------------------------------------------------


def _display_root(records: Sequence[ImageRecord]) -> Path:
    """A folder to name files from when none is given: one above the folders the records share."""
    if not records:
        return Path()
    common = Path(os.path.commonpath([str(record.path.parent) for record in records]))
    return common.parent


def _display_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _in_chunks(count: int, work: Callable[[range], None], num_threads: int | None) -> None:
    """Run ``work`` over ranges of ``[0, count)``, on a thread pool when that helps.

    PIL releases the GIL while it decodes, so threads pay off for real photos. For tiny images (CIFAR's
    32 x 32) the time goes to PIL's Python-side header parsing, which holds the GIL, and threads only
    contend: with ``num_threads`` None the first chunk is timed and the rest stays on this thread when
    an image takes under ``_THREADED_MIN_SECONDS``.
    """
    threads = num_threads if num_threads is not None else _default_threads()
    chunks = [range(start, min(start + _DECODE_CHUNK, count)) for start in range(0, count, _DECODE_CHUNK)]
    if num_threads is None and threads > 1 and len(chunks) > 1:
        started = time.perf_counter()
        work(chunks[0])
        if (time.perf_counter() - started) / len(chunks[0]) < _THREADED_MIN_SECONDS:
            threads = 1
        chunks = chunks[1:]
    if threads <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            work(chunk)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, chunks))


def _default_threads() -> int:
    return max(1, min(8, _available_cpus()))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _image_problem(path: Path, name: str, settings: EngineSettings, decode: bool) -> str | None:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > settings.image_max_pixels:
                return _too_many_pixels(name, width, height, settings)
            if decode:
                img.draft("RGB", (64, 64))  # JPEG: scaled IDCT, still reads and checks every byte
                img.load()
    except Image.DecompressionBombError as error:
        return f"{name}: too many pixels to open ({error})"
    except UnidentifiedImageError:
        return f"{name}: cannot be opened as an image (not a recognised image format)"
    except Exception as error:  # any decoder failure on untrusted bytes is this file's problem
        return f"{name}: truncated or corrupt ({error})"
    return None


def _too_many_pixels(name: str, width: int, height: int, settings: EngineSettings) -> str:
    return (
        f"{name}: {width}x{height} is {width * height} pixels, above the limit of "
        f"{settings.image_max_pixels} (FT_IMAGE_MAX_PIXELS)"
    )


def check_images(
    records: Sequence[ImageRecord],
    settings: EngineSettings,
    *,
    decode: bool = True,
    root: Path | None = None,
    num_threads: int | None = None,
) -> list[str]:
    """Problems, one per bad file (named relative to ``root``): unreadable, truncated, corrupt, too big.

    ``decode=True`` decodes every image fully; ``decode=False`` reads headers only.
    """
    base = root if root is not None else _display_root(records)
    found: list[str | None] = [None] * len(records)

    def work(chunk: range) -> None:
        for i in chunk:
            path = records[i].path
            found[i] = _image_problem(path, _display_name(path, base), settings, decode)

    _in_chunks(len(records), work, num_threads)
    return [problem for problem in found if problem is not None]


# --- splits ------------------------------------------------------------------------------------


def _mixed_seed(*parts: str | int) -> int:
    """A 63-bit seed from a tuple: stable across runs and processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _by_class(records: Sequence[ImageRecord]) -> dict[int, list[ImageRecord]]:
    classes: dict[int, list[ImageRecord]] = {}
    for record in sorted(records, key=_record_order):
        classes.setdefault(record.label, []).append(record)
    return classes


def _record_order(record: ImageRecord) -> tuple[int, str]:
    return record.label, str(record.path)


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
        n_val = min(max(math.floor(fraction * n + 0.5), 1), n - 1) if n >= 2 else 0
        rng = random.Random(_mixed_seed("val_split", seed, label))
        chosen = set(rng.sample(range(n), n_val))
        for i, record in enumerate(members):
            (val if i in chosen else train).append(record)
    return train, val


def subset_per_class(records: Sequence[ImageRecord], per_class: int, seed: int) -> list[ImageRecord]:
    """At most ``per_class`` records of each class, a seeded choice, sorted by (label, path)."""
    subset: list[ImageRecord] = []
    for label, members in _by_class(records).items():
        rng = random.Random(_mixed_seed("subset", seed, label))
        chosen = sorted(rng.sample(range(len(members)), min(per_class, len(members))))
        subset.extend(members[i] for i in chosen)
    return subset


# --- validation of an upload -------------------------------------------------------------------


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


# --- decoding ----------------------------------------------------------------------------------


def _open_rgb(path: Path, draft_size: int | None) -> Image.Image:
    """The image as RGB, upright by its EXIF orientation; a JPEG decoded at a reduced scale if it suffices."""
    with Image.open(path) as img:
        if draft_size is not None:
            img.draft("RGB", (draft_size, draft_size))  # keeps both sides >= draft_size
        image: Image.Image = img
        if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation: phone photos are stored sideways
            image = ImageOps.exif_transpose(img) or img
        if image.mode in ("P", "PA"):
            return image.convert("RGBA").convert("RGB")  # palette transparency, without PIL's warning
        return image.convert("RGB")


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the central ``size`` x ``size`` (torchvision's Resize + CenterCrop)."""
    width, height = img.size
    if min(width, height) != size:
        scale = size / min(width, height)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    if (width, height) != (size, size):
        left = round((width - size) / 2.0)
        top = round((height - size) / 2.0)
        img = img.crop((left, top, left + size, top + size))
    return img


def _decode_resized(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the image resized so its shorter side is ``size`` and center-cropped."""
    return np.asarray(_resize_center_crop(_open_rgb(path, size), size))


def _decode_error(name: str, error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"{name}: cannot be opened as an image (not a recognised image format)"
    return f"{name}: cannot be decoded ({error})"


def _decode_all(records: Sequence[ImageRecord], size: int, num_threads: int | None, root: Path | None) -> torch.Tensor:
    """Every image decoded to one (N, 3, size, size) uint8 tensor; all failures raised together."""
    out = np.empty((len(records), 3, size, size), dtype=np.uint8)
    failures: list[str | None] = [None] * len(records)
    base = root if root is not None else _display_root(records)

    def work(chunk: range) -> None:
        for i in chunk:
            path = records[i].path
            try:
                out[i] = _decode_resized(path, size).transpose(2, 0, 1)
            except Exception as error:  # any decoder failure on untrusted bytes is this file's problem
                failures[i] = _decode_error(_display_name(path, base), error)

    _in_chunks(len(records), work, num_threads)
    problems = [failure for failure in failures if failure is not None]
    if problems:
        raise DatasetError("dataset_unreadable", problems)
    return torch.from_numpy(out)


def decoded_bytes(num_images: int, image_size: int) -> int:
    """Bytes of ``num_images`` decoded uint8 RGB images of ``image_size`` squared."""
    return num_images * 3 * image_size * image_size


# --- batching and augmentation -----------------------------------------------------------------

Batch = tuple[torch.Tensor, torch.Tensor]  # images uint8 (B, 3, S, S), labels int64 (B,), on the device


class BatchSource(Protocol):
    num_images: int

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, skipping the first ``start`` (a resume in the middle of an epoch)."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...


def train_batches(num_images: int, batch_size: int) -> int:
    """Training batches per epoch: a short last batch is kept only if it holds at least half a batch.

    Batch norm normalizes by the batch's own statistics: a batch of two or three images gives
    gradients orders of magnitude larger than a full one. The order is reshuffled every epoch, so
    the images left out differ each time. A set smaller than one batch trains as one batch.
    """
    full, rest = divmod(num_images, batch_size)
    if full == 0:
        return 1 if num_images >= 2 else 0
    return full + (1 if rest >= max(batch_size // 2, 2) else 0)


def _num_batches(num_images: int, batch_size: int, train: bool) -> int:
    if train:
        return train_batches(num_images, batch_size)
    return -(-num_images // batch_size)


def _epoch_order(num_images: int, seed: int, epoch: int, train: bool) -> torch.Tensor:
    if not train:
        return torch.arange(num_images)
    generator = torch.Generator().manual_seed(_mixed_seed("order", seed, epoch))
    return torch.randperm(num_images, generator=generator)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices in [-(size-1), 2(size-1)] into [0, size) (reflect padding, edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _crop_with_padding(
    images: torch.Tensor, offsets: torch.Tensor, padding: int, flip: torch.Tensor | None
) -> torch.Tensor:
    """Per image, the S x S window at ``offsets`` (dy, dx) of the reflect-padded image, flipped where asked.

    One gather for the whole batch: ``offsets`` is (2, B) in [0, 2 * padding], ``flip`` (B,) bool.
    """
    batch, channels, size, _ = images.shape
    steps = torch.arange(size, device=images.device)
    rows = _reflect(steps[None, :] + (offsets[0][:, None] - padding), size)  # (B, S)
    cols = _reflect(steps[None, :] + (offsets[1][:, None] - padding), size)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * size + cols[:, None, :]).reshape(batch, 1, size * size)
    flat = images.reshape(batch, channels, size * size)
    return flat.gather(2, index.expand(batch, channels, size * size)).view(batch, channels, size, size)


def _resized_crop_theta(
    batch: int, min_scale: float, flip: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, 3) affine maps of random resized crops of a square image, in grid_sample's [-1, 1] units.

    Area fraction in [min_scale, 1], aspect ratio log-uniform in [3/4, 4/3]; a side that would leave the
    image is clipped to it (torchvision retries instead; the difference is a slightly narrower ratio range).
    """
    area = torch.empty(batch).uniform_(min_scale, 1.0, generator=generator)
    low, high = math.log(_RESIZED_CROP_RATIO[0]), math.log(_RESIZED_CROP_RATIO[1])
    ratio = torch.empty(batch).uniform_(low, high, generator=generator).exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the side
    height = (area / ratio).sqrt().clamp(max=1.0)
    center_x = torch.rand(batch, generator=generator) * (1.0 - width) + width / 2
    center_y = torch.rand(batch, generator=generator) * (1.0 - height) + height / 2
    scale_x = torch.where(flip, -width, width) if flip is not None else width
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = 2 * center_x - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * center_y - 1
    return theta


def _resized_crop(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def crop_padding(augment: AugmentSpec, image_size: int) -> int:
    """Reflect padding of the small-image random crop, in pixels (at most S - 1, as reflection needs)."""
    padding = augment.crop_padding if augment.crop_padding is not None else image_size // 8
    return min(padding, image_size - 1)


def augment_batch(images: torch.Tensor, augment: AugmentSpec, seed: int, epoch: int, batch_index: int) -> torch.Tensor:
    """Random crop (with padding up to 64 px, resized above) and flip of a uint8 batch, on its device.

    Parameters come from a CPU generator seeded by (seed, epoch, batch_index): the same batch gets the same
    augmentation on any device and after a resume.
    """
    batch, _, size, _ = images.shape
    device = images.device
    generator = torch.Generator().manual_seed(_mixed_seed("augment", seed, epoch, batch_index))
    flip_cpu = torch.rand(batch, generator=generator) < 0.5 if augment.hflip else None
    flip = flip_cpu.to(device, non_blocking=True) if flip_cpu is not None else None
    if augment.random_crop and size <= 64:
        padding = crop_padding(augment, size)
        offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
        return _crop_with_padding(images, offsets.to(device, non_blocking=True), padding, flip)
    if augment.random_crop:
        theta = _resized_crop_theta(batch, augment.min_crop_scale, flip_cpu, generator)
        return _resized_crop(images, theta.to(device, non_blocking=True))
    if flip is not None:
        return torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def _keeps_on_device(num_bytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return num_bytes <= free // 4  # leave the rest to the model, its activations and the optimizer


class InMemoryImages:
    """All images decoded once into one uint8 tensor; batches are gathered and augmented on the device.

    ``images`` is (N, 3, S, S) uint8: on the device when it takes at most a quarter of the free device
    memory (then a batch is pure device indexing), else in pinned host memory, gathered per batch into a
    pinned buffer and copied asynchronously. ``labels`` (N,) int64 always lives on the device.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        *,
        batch_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        device: torch.device,
        num_threads: int | None = None,
        root: Path | None = None,
    ) -> None:
        self.image_size = image_size
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.seed = seed
        self.device = device
        self.num_images = len(records)
        images = _decode_all(records, image_size, num_threads, root)
        labels = torch.tensor([record.label for record in records], dtype=torch.int64)
        self.on_device = _keeps_on_device(images.numel(), device)
        self.images = images.to(device) if self.on_device else images.pin_memory()
        self.labels = labels.to(device)

    def __len__(self) -> int:
        return _num_batches(self.num_images, self.batch_size, self.train)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = _epoch_order(self.num_images, self.seed, epoch, self.train)
        order_on_device = order.to(self.device, non_blocking=True)
        for index in range(start, len(self)):
            low = index * self.batch_size
            high = min(low + self.batch_size, self.num_images)
            images = self._gather(order, order_on_device, low, high)
            labels = self.labels[order_on_device[low:high]]
            if self.train:
                images = augment_batch(images, self.augment, self.seed, epoch, index)
            yield images, labels

    def _gather(self, order: torch.Tensor, order_on_device: torch.Tensor, low: int, high: int) -> torch.Tensor:
        if self.on_device:
            if not self.train:
                return self.images[low:high]
            return self.images.index_select(0, order_on_device[low:high])
        # Host-resident: gather into pinned memory so the copy overlaps with compute.
        buffer = torch.empty((high - low, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
        torch.index_select(self.images, 0, order[low:high], out=buffer)
        return buffer.to(self.device, non_blocking=True)


# --- streaming ---------------------------------------------------------------------------------

_Sample = tuple[torch.Tensor, int, str | None]  # image (3, S, S) uint8, label, decoding problem


def _resized_crop_box(height: int, width: int, min_scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of torchvision's RandomResizedCrop, drawn from ``rng``."""
    area = height * width
    log_low, log_high = math.log(_RESIZED_CROP_RATIO[0]), math.log(_RESIZED_CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height  # fallback: the central crop of the widest allowed ratio
    if ratio < _RESIZED_CROP_RATIO[0]:
        w, h = width, round(width / _RESIZED_CROP_RATIO[0])
    elif ratio > _RESIZED_CROP_RATIO[1]:
        h, w = height, round(height * _RESIZED_CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _ImageFiles(Dataset[_Sample]):
    """Images decoded from disk; indexed by (record index, epoch) so the randomness is per image and epoch."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        root: Path | None,
    ) -> None:
        base = root if root is not None else _display_root(records)
        self.paths = [record.path for record in records]
        self.labels = [record.label for record in records]
        self.names = [_display_name(record.path, base) for record in records]
        self.image_size = image_size
        self.train = train
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> _Sample:
        index, epoch = key
        try:
            image = self._load(index, epoch)
        except Exception as error:  # reported by the main process, with the file's name
            size = self.image_size
            return (
                torch.zeros(3, size, size, dtype=torch.uint8),
                self.labels[index],
                _decode_error(self.names[index], error),
            )
        return image, self.labels[index], None

    def _load(self, index: int, epoch: int) -> torch.Tensor:
        size, augment, path = self.image_size, self.augment, self.paths[index]
        if not self.train:
            return torch.from_numpy(_decode_resized(path, size).transpose(2, 0, 1).copy())
        rng = random.Random(_mixed_seed("sample", self.seed, epoch, index))
        flip = augment.hflip and rng.random() < 0.5
        if augment.random_crop and size > 64:
            array = np.asarray(_open_rgb(path, 2 * size)).transpose(2, 0, 1).copy()
            full = torch.from_numpy(array)
            top, left, h, w = _resized_crop_box(full.shape[1], full.shape[2], augment.min_crop_scale, rng)
            image: torch.Tensor = TF.resized_crop(full, top, left, h, w, [size, size], antialias=True)
        else:
            image = torch.from_numpy(_decode_resized(path, size).transpose(2, 0, 1).copy())
            if augment.random_crop:
                padding = crop_padding(augment, size)
                offsets = torch.tensor([[rng.randint(0, 2 * padding)], [rng.randint(0, 2 * padding)]])
                image = _crop_with_padding(image[None], offsets, padding, None)[0]
        return TF.horizontal_flip(image) if flip else image


class _EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (record index, epoch) in the epoch's seeded order, from batch ``start`` on."""

    def __init__(self, num_images: int, batch_size: int, train: bool, seed: int) -> None:
        self.num_images = num_images
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return _num_batches(self.num_images, self.batch_size, self.train)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = _epoch_order(self.num_images, self.seed, self.epoch, self.train).tolist()
        for index in range(self.start, len(self)):
            low = index * self.batch_size
            yield [(i, self.epoch) for i in order[low : low + self.batch_size]]


def _collate(samples: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([sample[0] for sample in samples])
    labels = torch.tensor([sample[1] for sample in samples], dtype=torch.int64)
    return images, labels, [sample[2] for sample in samples if sample[2] is not None]


class StreamingImages:
    """Images decoded from disk by ``num_workers`` DataLoader processes, for sets too big for memory.

    Same batches and order as ``InMemoryImages``; the augmentation is per image (torchvision's
    RandomResizedCrop above 64 px, a reflect-padded random crop up to it, a horizontal flip), seeded by
    (seed, epoch, image index), so a batch does not depend on the number of workers.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        *,
        batch_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        device: torch.device,
        num_workers: int,
        root: Path | None = None,
    ) -> None:
        self.num_images = len(records)
        self.device = device
        self._sampler = _EpochBatchSampler(len(records), batch_size, train, seed)
        self._loader = DataLoader(
            _ImageFiles(records, image_size, train, augment, seed, root),
            batch_sampler=self._sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self._sampler)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self._sampler.epoch = epoch  # read when the loader's iterator starts, in this process
        self._sampler.start = start
        for images, labels, problems in self._loader:
            if problems:
                raise DatasetError("dataset_unreadable", problems)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# --- normalization -----------------------------------------------------------------------------

ChannelStats = tuple[tuple[float, float, float], tuple[float, float, float]]


def _tensor_channel_stats(images: torch.Tensor) -> ChannelStats:
    """Exact per-channel mean and std (in [0, 1] units) of a uint8 (N, 3, S, S) tensor, on its device."""
    total = torch.zeros(3, dtype=torch.int64, device=images.device)
    squares = torch.zeros(3, dtype=torch.int64, device=images.device)
    for chunk in torch.split(images, 1024):
        wide = chunk.to(torch.int32)
        total += wide.sum(dim=(0, 2, 3), dtype=torch.int64)
        squares += (wide * wide).sum(dim=(0, 2, 3), dtype=torch.int64)
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    sums, sums_sq = total.tolist(), squares.tolist()  # one host sync, once per run
    mean = [s / (count * 255.0) for s in sums]
    std = [
        max(math.sqrt(max(sq / (count * 255.0**2) - m * m, 0.0)), _MIN_STD) for sq, m in zip(sums_sq, mean, strict=True)
    ]
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def channel_stats(
    source: InMemoryImages | Sequence[ImageRecord], image_size: int, max_images: int = 2000, seed: int = 0
) -> ChannelStats:
    """Per-channel mean and std in [0, 1] units of the train images (resized, center-cropped, not augmented).

    From all of the decoded tensor when the images are in memory, else from a seeded sample of files.
    """
    if isinstance(source, InMemoryImages):
        return _tensor_channel_stats(source.images)
    records = list(source)
    if len(records) > max_images:
        rng = random.Random(_mixed_seed("channel_stats", seed))
        records = [records[i] for i in sorted(rng.sample(range(len(records)), max_images))]
    return _tensor_channel_stats(_decode_all(records, image_size, None, None))


def normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> ``(x / 255 - mean) / std`` as ``dtype``; mean, std: (1, 3, 1, 1), same device."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)  # cheap at one byte a value
    scale = 1.0 / (255.0 * std.to(torch.float32))
    shift = mean.to(torch.float32) / std.to(torch.float32)
    out = images.to(torch.float32).mul_(scale.view(1, -1, 1, 1)).sub_(shift.view(1, -1, 1, 1))
    return out if dtype == torch.float32 else out.to(dtype)


# --- everything for a spec ---------------------------------------------------------------------


@dataclass
class DataBundle:
    class_names: list[str]
    train: BatchSource
    val: BatchSource
    test: BatchSource | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    in_memory: bool
    counts: dict[str, int]  # images per split


def _num_workers(setting: int | str) -> int:
    if isinstance(setting, int):
        return setting
    return max(0, min(8, _available_cpus() - 1))


def load_data(
    spec_data: DataSpec,
    image_size: int,
    *,
    source: Path,
    work_dir: Path,
    seed: int,
    device: torch.device,
    settings: EngineSettings,
    normalization: ChannelStats | None,
) -> DataBundle:
    """Everything the fit loop reads, for a spec: the splits as batch sources and the normalization.

    resolve_source -> scan -> subset of train (``subset_per_class``) -> a stratified val split when there
    is no val/ -> decoded into memory (``in_memory``: True, or "auto" and it fits ``in_memory_max_mb``)
    or streamed. ``normalization`` None uses the train split's own channel statistics.
    """
    layout = scan_image_folder(resolve_source(source, work_dir, settings))
    train = layout.train
    if spec_data.subset_per_class is not None:
        train = subset_per_class(train, spec_data.subset_per_class, seed)
    val = layout.val
    if val is None:
        train, val = stratified_split(train, spec_data.val_split, seed)
    splits = {"train": train, "val": val} | ({"test": layout.test} if layout.test is not None else {})
    total = decoded_bytes(sum(len(records) for records in splits.values()), image_size)
    in_memory = spec_data.in_memory is True or (
        spec_data.in_memory == "auto" and total <= settings.in_memory_max_mb * MIB
    )
    eval_batch_size = spec_data.eval_batch_size or 2 * spec_data.batch_size

    num_workers = _num_workers(spec_data.num_workers)

    def make(records: list[ImageRecord], train_split: bool) -> InMemoryImages | StreamingImages:
        batch_size = spec_data.batch_size if train_split else eval_batch_size
        if in_memory:
            return InMemoryImages(
                records,
                image_size,
                batch_size=batch_size,
                train=train_split,
                augment=spec_data.augment,
                seed=seed,
                device=device,
                root=layout.root,
            )
        return StreamingImages(
            records,
            image_size,
            batch_size=batch_size,
            train=train_split,
            augment=spec_data.augment,
            seed=seed,
            device=device,
            num_workers=num_workers,
            root=layout.root,
        )

    train_source = make(train, True)
    val_source = make(val, False)
    test_source = make(layout.test, False) if layout.test is not None else None
    if normalization is None:
        stats_from = train_source if isinstance(train_source, InMemoryImages) else train
        normalization = channel_stats(stats_from, image_size, seed=seed)
    mean, std = normalization
    return DataBundle(
        class_names=layout.class_names,
        train=train_source,
        val=val_source,
        test=test_source,
        mean=mean,
        std=std,
        in_memory=in_memory,
        counts={split: len(records) for split, records in splits.items()},
    )
