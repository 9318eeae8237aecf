"""Data sets as people upload them: safe archive extraction, the ImageFolder layout, image checks, splits.

No torch here: the service validates an upload with this module alone. Problems come back as
``DatasetError`` lines that name the files, so a person knows what to fix.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from training.errors import TrainingError
from training.settings import EngineSettings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED_PROBLEMS = 50

MIB = 1 << 20
_COPY_CHUNK = MIB
# Entries smaller than this are never refused for their compression ratio: a blank BMP or a text file
# legitimately compresses a few hundred times. The total-size limit still bounds them all.
_RATIO_MIN_BYTES = MIB
# A tar header member (a pax extended header, a GNU long name or link) is read whole into memory by
# tarfile before the entry it describes: a real one holds a path and a few fields, never this much.
MAX_HEADER_MEMBER_BYTES = 64 * 1024
_ZIP_LOCAL_HEADER_BYTES = 30
_MAX_WRAPPER_FOLDERS = 3
_DECODE_CHUNK = 64  # images per thread task: tiny images are dominated by per-task overhead
_THREADED_MIN_SECONDS = 0.0005  # per image, below which decoding threads only contend for the GIL


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
        self.archive_bytes = archive.stat().st_size
        # The whole archive may write at most max_ratio times its own size (small sets of blank images
        # compress well: never less than _RATIO_MIN_BYTES).
        self.max_expanded = max(self.max_ratio * self.archive_bytes, _RATIO_MIN_BYTES)
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
        if self.written > self.max_expanded:
            raise _invalid(
                f"{self.archive}: expands more than {self.max_ratio} times its size of {self.archive_bytes} bytes "
                f"(over {self.written} bytes written, at entry {entry}); refused as a possible archive bomb "
                "(FT_EXTRACT_MAX_RATIO)"
            )
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


def _check_zip_spans(archive: Path, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries whose stored bytes overlap (one compressed stream named by many entries multiplies
    what a small archive writes), read from each entry's own local header."""
    assert zf.fp is not None
    spans = []
    for info in infos:
        zf.fp.seek(info.header_offset)
        header = zf.fp.read(_ZIP_LOCAL_HEADER_BYTES)
        if len(header) < _ZIP_LOCAL_HEADER_BYTES or header[:4] != b"PK\x03\x04":
            raise _invalid(f"{archive.name}: entry {info.filename} has no local header where the directory says")
        name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        start = info.header_offset
        spans.append((start, start + _ZIP_LOCAL_HEADER_BYTES + name_len + extra_len + info.compress_size, info))
    spans.sort(key=lambda span: span[0])
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise _invalid(
                f"{archive.name}: entries {first.filename} and {second.filename} overlap in the archive; "
                "refused as a possible zip bomb"
            )


def _extract_zip(archive: Path, staging: Path, budget: _ExtractBudget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        budget.count_entries(len(infos))
        budget.check_declared_total(sum(info.file_size for info in infos))
        _check_zip_spans(archive, zf, infos)
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


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses a header member (pax, GNU long name or link) over
    ``MAX_HEADER_MEMBER_BYTES`` before tarfile reads it whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_MEMBER_TYPES and self.size > MAX_HEADER_MEMBER_BYTES:
            kind = "a pax extended header" if self.type in _PAX_TYPES else "a GNU long name"
            raise _invalid(
                f"{Path(str(tarfile_.name or 'archive')).name}: {kind} of {self.size} bytes "
                f"(the limit is {MAX_HEADER_MEMBER_BYTES // 1024} KiB); refused"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


_PAX_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
_HEADER_MEMBER_TYPES = _PAX_TYPES | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}


def _extract_tar(archive: Path, staging: Path, budget: _ExtractBudget) -> None:
    # Stream mode: one pass over a compressed tar, members read in order, nothing seeks back.
    with tarfile.open(archive, mode="r|*", tarinfo=_BoundedTarInfo) as tar:
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
        with tarfile.open(archive, mode="r|*", tarinfo=_BoundedTarInfo):
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
    than ``extract_max_files`` entries, more than ``extract_max_mb`` written, a zip entry or the whole
    archive expanding more than ``extract_max_ratio`` times, zip entries whose stored bytes overlap, a tar
    header member (pax, GNU long name) over 64 KiB. Bytes are counted as written, not taken from headers.
    The archive extracts into a staging folder beside ``dest`` that is deleted when anything goes wrong, so
    ``dest`` is never half-full.
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


def in_chunks(count: int, work: Callable[[range], None], num_threads: int | None) -> None:
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
    return max(1, min(8, available_cpus()))


def available_cpus() -> int:
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
    except MemoryError:
        raise  # the validator's memory limit, not this file's fault: the whole validation stops
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
    base = root if root is not None else display_root(records)
    found: list[str | None] = [None] * len(records)

    def work(chunk: range) -> None:
        for i in chunk:
            path = records[i].path
            found[i] = _image_problem(path, display_name(path, base), settings, decode)

    in_chunks(len(records), work, num_threads)
    return [problem for problem in found if problem is not None]


# --- splits ------------------------------------------------------------------------------------


def mixed_seed(*parts: str | int) -> int:
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
