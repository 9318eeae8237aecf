"""Archives as people upload them, extracted safely: zip, tar and compressed tar, with every limit checked.

No torch here: the service extracts an upload with this module alone. An unsafe or corrupt archive is a
``DatasetError`` that names the entry, so a person knows what to fix.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

from training.errors import DatasetError
from training.settings import EngineSettings

_invalid = DatasetError.invalid

MIB = 1 << 20
_COPY_CHUNK = MIB
# Entries smaller than this are never refused for their compression ratio: a blank BMP or a text file
# legitimately compresses a few hundred times. The total-size limit still bounds them all.
_RATIO_MIN_BYTES = MIB
# A tar header member (a pax extended header, a GNU long name or link) is read whole into memory by
# tarfile before the entry it describes: a real one holds a path and a few fields, never this much.
MAX_HEADER_MEMBER_BYTES = 64 * 1024
_ZIP_LOCAL_HEADER_BYTES = 30


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
