"""Tiny image trees and archives for the data tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.imagefolder import ImageRecord, scan_image_folder


def png_bytes(width: int = 8, height: int = 8, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, width: int = 8, height: int = 8, seed: int = 0, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(width, height, seed, fmt))
    return path


def make_tree(root: Path, counts: dict[str, int], size: int = 8, seed: int = 0) -> Path:
    """root/<class>/<i>.png for each class, with a distinct seeded image each."""
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            write_image(root / name / f"{i:03d}.png", size, size, seed=seed * 10_000 + c * 1000 + i)
    return root


def records_of(root: Path) -> list[ImageRecord]:
    return scan_image_folder(root).train


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in entries.items():
            add_tar_file(tar, name, data)
    return path


def left_in(folder: Path, archive: Path) -> list[str]:
    """What extraction left in ``folder`` besides the archive itself."""
    return sorted(p.name for p in folder.iterdir() if p != archive)


def batches_of(source, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in source.batches(epoch, start)]
