"""Hostile archives, built here byte by byte: each is refused with the limit it hit named, before it can
fill the memory or the disk, and nothing half-extracted is left behind."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.training.images import left_in, png_bytes
from training.archives import MAX_HEADER_MEMBER_BYTES, safe_extract
from training.errors import DatasetError
from training.settings import EngineSettings

MIB = 1 << 20
SETTINGS = EngineSettings()


def header_member(kind: bytes, size: int) -> bytes:
    """A tar header block of ``kind`` (pax 'x', GNU long name 'L') that announces ``size`` bytes."""
    info = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def gzip_of_zeros(path: Path, head: bytes, zeros: int, tail: bytes = b"") -> Path:
    """``head``, then ``zeros`` zero bytes streamed through gzip (never all in memory), then ``tail``."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(head)
        block = bytes(MIB)
        for _ in range(zeros // MIB):
            out.write(block)
        out.write(bytes(zeros % MIB))
        out.write(tail)
    return path


@pytest.mark.parametrize(
    ("kind", "named", "payload"),
    [(tarfile.XHDTYPE, "pax extended header", 256 * MIB), (tarfile.GNUTYPE_LONGNAME, "GNU long name", MIB)],
)
def test_a_tar_header_member_over_64_kib_is_refused_before_it_is_read(tmp_path, kind, named, payload):
    # A header that announces 256 MiB: the 254 KiB .tar.gz that made the validator read it whole (the GNU
    # one is cut short after 1 MiB: it is refused before its payload is read either way).
    archive = gzip_of_zeros(tmp_path / "header.tar.gz", header_member(kind, 256 * MIB), payload)
    assert archive.stat().st_size < 300 * 1024

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, tmp_path / "out", SETTINGS)

    assert caught.value.code == "dataset_invalid"
    assert f"a {named} of {256 * MIB} bytes (the limit is 64 KiB); refused" in str(caught.value)
    assert left_in(tmp_path, archive) == []


def test_a_header_member_at_the_limit_is_read(tmp_path):
    """A long (but not hostile) name in a pax header extracts as before."""
    name = "train/cat/" + "n" * 200 + ".png"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = png_bytes()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = {"comment": "c" * (MAX_HEADER_MEMBER_BYTES - 1024)}
        tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "long.tar"
    archive.write_bytes(buffer.getvalue())

    out = safe_extract(archive, tmp_path / "out", SETTINGS)

    assert (out / name).read_bytes() == png_bytes()


def test_a_tar_of_zeros_stops_at_the_whole_archive_ratio(tmp_path):
    """64 MiB of zeros in a 64 KiB .tar.gz: refused once R times the archive is written, not after 64 MiB."""
    info = tarfile.TarInfo("train/cat/zeros.bmp")
    info.size = 64 * MIB
    padding = b"\0" * (-info.size % 512) + b"\0" * 1024
    archive = gzip_of_zeros(tmp_path / "zeros.tar.gz", info.tobuf(format=tarfile.USTAR_FORMAT), info.size, padding)
    ratio = 20
    limit = max(ratio * archive.stat().st_size, MIB)

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, tmp_path / "out", EngineSettings(extract_max_ratio=ratio))

    message = str(caught.value)
    assert f"expands more than {ratio} times its size of {archive.stat().st_size} bytes" in message
    assert "FT_EXTRACT_MAX_RATIO" in message
    written = int(message.split("over ")[1].split(" bytes")[0])
    assert limit < written <= limit + MIB  # stopped within one copy chunk of the limit
    assert left_in(tmp_path, archive) == []


def overlapping_zip(path: Path, copies: int) -> Path:
    """One deflated entry of zeros, named ``copies`` times by the central directory (Fifield's overlap)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/cat/000.bmp", bytes(4 * MIB))
    raw = buffer.getvalue()
    end = raw.rindex(b"PK\x05\x06")
    central_at = struct.unpack("<I", raw[end + 16 : end + 20])[0]
    record = raw[central_at:end]
    name_at = 46
    records = b"".join(
        record[:name_at] + f"train/cat/{i:03d}.bmp".encode() + record[name_at + len("train/cat/000.bmp") :]
        for i in range(copies)
    )
    eocd = bytearray(raw[end:])
    struct.pack_into("<HHII", eocd, 8, copies, copies, len(records), central_at)
    path.write_bytes(raw[:central_at] + records + bytes(eocd))
    return path


def test_overlapping_zip_entries_are_refused(tmp_path):
    archive = overlapping_zip(tmp_path / "overlap.zip", copies=50)

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, tmp_path / "out", EngineSettings(extract_max_ratio=100_000))

    assert caught.value.code == "dataset_invalid"
    assert "entries train/cat/000.bmp and train/cat/001.bmp overlap in the archive" in str(caught.value)
    assert left_in(tmp_path, archive) == []


def test_many_small_zip_entries_stop_at_the_whole_archive_ratio(tmp_path):
    """Entries of 1 MiB each pass the per-entry check (its floor); the whole archive is counted as written."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(32):
            zf.writestr(f"train/cat/{i:02d}.bmp", bytes(MIB))
    archive = tmp_path / "many.zip"
    archive.write_bytes(buffer.getvalue())  # 32 MiB in about 40 KiB

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, tmp_path / "out", SETTINGS)

    assert f"expands more than {SETTINGS.extract_max_ratio} times its size" in str(caught.value)
    assert left_in(tmp_path, archive) == []
