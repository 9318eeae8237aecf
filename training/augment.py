"""Random crops and flips of uint8 batches on their device: the one augmentation of both batch sources.

A batch's draws come from a CPU generator seeded by (seed, epoch, batch index), so the same batch is
augmented the same way on any device, with any number of loader workers or processes, and after a resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.seeds import batch_seed
from training.spec import AugmentSpec

_RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


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


def augment_batch(
    images: torch.Tensor,
    augment: AugmentSpec,
    seed: int,
    epoch: int,
    batch_index: int,
    *,
    whole: int | None = None,
    first: int = 0,
) -> torch.Tensor:
    """Random crop (with padding up to 64 px, resized above) and flip of a uint8 batch, on its device.

    Parameters come from a CPU generator seeded by (seed, epoch, batch_index): the same batch gets the same
    augmentation on any device and after a resume. ``images`` may be a rank's rows, ``first`` on, of a batch
    of ``whole`` images: the draws are the whole batch's, so a rank augments its rows as one process would.
    """
    count, _, size, _ = images.shape
    whole = count if whole is None else whole
    rows = slice(first, first + count)
    device = images.device
    generator = torch.Generator().manual_seed(batch_seed("augment", seed, epoch, batch_index))
    flip_whole = torch.rand(whole, generator=generator) < 0.5 if augment.hflip else None
    flip = flip_whole[rows].to(device, non_blocking=True) if flip_whole is not None else None
    if augment.random_crop and size <= 64:
        padding = crop_padding(augment, size)
        offsets = torch.randint(0, 2 * padding + 1, (2, whole), generator=generator)[:, rows]
        return _crop_with_padding(images, offsets.to(device, non_blocking=True), padding, flip)
    if augment.random_crop:
        theta = _resized_crop_theta(whole, augment.min_crop_scale, flip_whole, generator)[rows]
        return _resized_crop(images, theta.to(device, non_blocking=True))
    if flip is not None:
        return torch.where(flip[:, None, None, None], images.flip(3), images)
    return images
