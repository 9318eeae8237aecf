"""A few small pictures of each class of an ImageFolder tree, for a person to check that a data set holds
what its folder names say (the console's data set page)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from training.imagefolder import scan_image_folder

THUMBNAILS_PER_CLASS = 4
THUMBNAIL_PIXELS = 64  # the longer side; small pictures (CIFAR's 32 px) are not enlarged


def class_thumbnails(
    folder: Path, per_class: int = THUMBNAILS_PER_CLASS, pixels: int = THUMBNAIL_PIXELS
) -> dict[str, list[bytes]]:
    """PNG thumbnails of the first ``per_class`` training images (by path) of each class, in class order."""
    layout = scan_image_folder(folder)
    chosen: dict[str, list[Path]] = {name: [] for name in layout.class_names}
    for record in layout.train:  # sorted by (label, path): the same pictures every time
        picked = chosen[layout.class_names[record.label]]
        if len(picked) < per_class:
            picked.append(record.path)
    return {name: [_thumbnail(path, pixels) for path in paths] for name, paths in chosen.items()}


def _thumbnail(path: Path, pixels: int) -> bytes:
    with Image.open(path) as image:
        picture = image.convert("RGB")
    picture.thumbnail((pixels, pixels))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()
