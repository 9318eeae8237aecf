"""Hostile archives built byte by byte, for the engine's unit tests (tests/training/test_hostile_archives.py)
and the uploads through a real worker (tests/integration/test_hostile_uploads.py). No torch here."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path

MIB = 1 << 20


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


def tar_gz_of_zeros(path: Path, size: int, name: str = "train/cat/zeros.bmp") -> Path:
    """A .tar.gz of one entry of ``size`` zero bytes: a few KiB per MiB it writes."""
    info = tarfile.TarInfo(name)
    info.size = size
    padding = b"\0" * (-size % 512) + b"\0" * 1024
    return gzip_of_zeros(path, info.tobuf(format=tarfile.USTAR_FORMAT), size, padding)


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
