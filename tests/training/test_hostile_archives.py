"""Hostile archives, built here byte by byte: each is refused with the limit it hit named, before it can
fill the memory or the disk, and nothing half-extracted is left behind."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from tests.hostile_archives import MIB, gzip_of_zeros, header_member, overlapping_zip, tar_gz_of_zeros
from tests.training.images import left_in, png_bytes
from training.archives import MAX_HEADER_MEMBER_BYTES, safe_extract
from training.errors import DatasetError
from training.settings import EngineSettings

SETTINGS = EngineSettings()


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
    archive = tar_gz_of_zeros(tmp_path / "zeros.tar.gz", 64 * MIB)
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
