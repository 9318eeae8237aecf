"""Image files to pixels: opened upright as RGB, checked, resized and center-cropped to uint8 arrays, on
threads where that helps.

No torch here: the service checks an upload's images with this module, and the engine's batch sources
build their tensors from what it decodes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.imagefolder import ImageRecord, display_name, display_root
from training.settings import EngineSettings

_DECODE_CHUNK = 64  # images per thread task: tiny images are dominated by per-task overhead
_THREADED_MIN_SECONDS = 0.0005  # per image, below which decoding threads only contend for the GIL


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


def decode_resized(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the image resized so its shorter side is ``size`` and center-cropped."""
    return np.asarray(_resize_center_crop(_open_rgb(path, size), size))


def decode_problem(name: str, error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"{name}: cannot be opened as an image (not a recognised image format)"
    return f"{name}: cannot be decoded ({error})"


def in_chunks(count: int, work: Callable[[range], None], num_threads: int | None) -> None:
    """Run ``work`` over ranges of ``[0, count)``, on a thread pool when that helps.

    PIL releases the GIL while it decodes, so threads pay off for real photos. For tiny images (CIFAR's
    32 x 32) the time goes to PIL's Python-side header parsing, which holds the GIL, and threads only
    contend: with ``num_threads`` None the first chunk is timed and the rest stays on this thread when
    an image takes under ``_THREADED_MIN_SECONDS``.
    """
    threads = num_threads if num_threads is not None else decode_threads()
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


def decode_threads() -> int:
    """Threads that decode images when the caller does not say (``in_chunks``)."""
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
