"""Input normalization: the train images' per-channel statistics, and uint8 batches scaled by them."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from training.batches import InMemoryImages, decode_images
from training.imagefolder import ImageRecord
from training.seeds import mixed_seed

_MIN_STD = 1.0 / 255.0  # a constant channel would otherwise normalize to inf

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
        rng = random.Random(mixed_seed("channel_stats", seed))
        records = [records[i] for i in sorted(rng.sample(range(len(records)), max_images))]
    return _tensor_channel_stats(decode_images(records, image_size, None, None))


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
