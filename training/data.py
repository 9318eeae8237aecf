"""Batches of uint8 images on the training device, from the records ``training.dataset`` found.

- ``InMemoryImages`` decodes every image once into one ``(N, 3, S, S)`` uint8 tensor and augments whole
  batches on the device, with no Python work per image and no host syncs in ``batches``;
- ``StreamingImages`` decodes from disk in ``DataLoader`` worker processes, for sets too big to hold.

Every random choice is seeded from the run's seed, the epoch and the batch (or image) index, so a batch
is the same on any device, with any number of workers, and after a resume that skips into an epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from training.dataset import (
    MIB,
    DatasetError,
    ImageFolderLayout,
    ImageRecord,
    available_cpus,
    display_name,
    display_root,
    in_chunks,
    mixed_seed,
    resolve_source,
    scan_image_folder,
    stratified_split,
    subset_per_class,
    train_batches,
)
from training.distributed import ONE_PROCESS, Shard
from training.settings import EngineSettings
from training.spec import AugmentSpec, DataSpec

_MIN_STD = 1.0 / 255.0  # a constant channel would otherwise normalize to inf
_RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


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


def _decode_resized(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the image resized so its shorter side is ``size`` and center-cropped."""
    return np.asarray(_resize_center_crop(_open_rgb(path, size), size))


def _decode_error(name: str, error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"{name}: cannot be opened as an image (not a recognised image format)"
    return f"{name}: cannot be decoded ({error})"


def _decode_all(records: Sequence[ImageRecord], size: int, num_threads: int | None, root: Path | None) -> torch.Tensor:
    """Every image decoded to one (N, 3, size, size) uint8 tensor; all failures raised together."""
    out = np.empty((len(records), 3, size, size), dtype=np.uint8)
    failures: list[str | None] = [None] * len(records)
    base = root if root is not None else display_root(records)

    def work(chunk: range) -> None:
        for i in chunk:
            path = records[i].path
            try:
                out[i] = _decode_resized(path, size).transpose(2, 0, 1)
            except Exception as error:  # any decoder failure on untrusted bytes is this file's problem
                failures[i] = _decode_error(display_name(path, base), error)

    in_chunks(len(records), work, num_threads)
    problems = [failure for failure in failures if failure is not None]
    if problems:
        raise DatasetError("dataset_unreadable", problems)
    return torch.from_numpy(out)


def decoded_bytes(num_images: int, image_size: int) -> int:
    """Bytes of ``num_images`` decoded uint8 RGB images of ``image_size`` squared."""
    return num_images * 3 * image_size * image_size


# --- batching and augmentation -----------------------------------------------------------------

Batch = tuple[torch.Tensor, torch.Tensor]  # images uint8 (B, 3, S, S), labels int64 (B,), on the device


class BatchSource(Protocol):
    num_images: int

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, skipping the first ``start`` (a resume in the middle of an epoch)."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...


def _num_batches(num_images: int, batch_size: int, train: bool) -> int:
    if train:
        return train_batches(num_images, batch_size)
    return -(-num_images // batch_size)


def _epoch_order(num_images: int, seed: int, epoch: int, train: bool) -> torch.Tensor:
    if not train:
        return torch.arange(num_images)
    generator = torch.Generator().manual_seed(mixed_seed("order", seed, epoch))
    return torch.randperm(num_images, generator=generator)


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


def augment_batch(images: torch.Tensor, augment: AugmentSpec, seed: int, epoch: int, batch_index: int) -> torch.Tensor:
    """Random crop (with padding up to 64 px, resized above) and flip of a uint8 batch, on its device.

    Parameters come from a CPU generator seeded by (seed, epoch, batch_index): the same batch gets the same
    augmentation on any device and after a resume.
    """
    batch, _, size, _ = images.shape
    device = images.device
    generator = torch.Generator().manual_seed(mixed_seed("augment", seed, epoch, batch_index))
    flip_cpu = torch.rand(batch, generator=generator) < 0.5 if augment.hflip else None
    flip = flip_cpu.to(device, non_blocking=True) if flip_cpu is not None else None
    if augment.random_crop and size <= 64:
        padding = crop_padding(augment, size)
        offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
        return _crop_with_padding(images, offsets.to(device, non_blocking=True), padding, flip)
    if augment.random_crop:
        theta = _resized_crop_theta(batch, augment.min_crop_scale, flip_cpu, generator)
        return _resized_crop(images, theta.to(device, non_blocking=True))
    if flip is not None:
        return torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def _keeps_on_device(num_bytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return num_bytes <= free // 4  # leave the rest to the model, its activations and the optimizer


class InMemoryImages:
    """All images decoded once into one uint8 tensor; batches are gathered and augmented on the device.

    ``images`` is (N, 3, S, S) uint8: on the device when it takes at most a quarter of the free device
    memory (then a batch is pure device indexing), else in pinned host memory, gathered per batch into a
    pinned buffer and copied asynchronously. ``labels`` (N,) int64 always lives on the device.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        *,
        batch_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        device: torch.device,
        num_threads: int | None = None,
        root: Path | None = None,
        shard: Shard = ONE_PROCESS,
    ) -> None:
        self.image_size = image_size
        self.shard = shard
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.seed = seed
        self.device = device
        self.num_images = len(records)
        images = _decode_all(records, image_size, num_threads, root)
        labels = torch.tensor([record.label for record in records], dtype=torch.int64)
        self.on_device = _keeps_on_device(images.numel(), device)
        self.images = images.to(device) if self.on_device else images.pin_memory()
        self.labels = labels.to(device)

    def __len__(self) -> int:
        return _num_batches(self.num_images, self.batch_size, self.train)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = _epoch_order(self.num_images, self.seed, epoch, self.train)
        order_on_device = order.to(self.device, non_blocking=True)
        for index in range(start, len(self)):
            low = index * self.batch_size
            high = min(low + self.batch_size, self.num_images)
            images = self._gather(order, order_on_device, low, high)
            labels = self.labels[order_on_device[low:high]]
            if self.train:
                images = augment_batch(images, self.augment, self.seed, epoch, index)
            # A rank's slice of the global batch, augmented as a whole first: the same draws at any process count.
            yield self.shard.take(images, labels)

    def _gather(self, order: torch.Tensor, order_on_device: torch.Tensor, low: int, high: int) -> torch.Tensor:
        if self.on_device:
            if not self.train:
                return self.images[low:high]
            return self.images.index_select(0, order_on_device[low:high])
        # Host-resident: gather into pinned memory so the copy overlaps with compute.
        buffer = torch.empty((high - low, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
        torch.index_select(self.images, 0, order[low:high], out=buffer)
        return buffer.to(self.device, non_blocking=True)


# --- streaming ---------------------------------------------------------------------------------

_Sample = tuple[torch.Tensor, int, str | None]  # image (3, S, S) uint8, label, decoding problem


def _resized_crop_box(height: int, width: int, min_scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of torchvision's RandomResizedCrop, drawn from ``rng``."""
    area = height * width
    log_low, log_high = math.log(_RESIZED_CROP_RATIO[0]), math.log(_RESIZED_CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height  # fallback: the central crop of the widest allowed ratio
    if ratio < _RESIZED_CROP_RATIO[0]:
        w, h = width, round(width / _RESIZED_CROP_RATIO[0])
    elif ratio > _RESIZED_CROP_RATIO[1]:
        h, w = height, round(height * _RESIZED_CROP_RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _ImageFiles(Dataset[_Sample]):
    """Images decoded from disk; indexed by (record index, epoch) so the randomness is per image and epoch."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        root: Path | None,
    ) -> None:
        base = root if root is not None else display_root(records)
        self.paths = [record.path for record in records]
        self.labels = [record.label for record in records]
        self.names = [display_name(record.path, base) for record in records]
        self.image_size = image_size
        self.train = train
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> _Sample:
        index, epoch = key
        try:
            image = self._load(index, epoch)
        except Exception as error:  # reported by the main process, with the file's name
            size = self.image_size
            return (
                torch.zeros(3, size, size, dtype=torch.uint8),
                self.labels[index],
                _decode_error(self.names[index], error),
            )
        return image, self.labels[index], None

    def _load(self, index: int, epoch: int) -> torch.Tensor:
        size, augment, path = self.image_size, self.augment, self.paths[index]
        if not self.train:
            return torch.from_numpy(_decode_resized(path, size).transpose(2, 0, 1).copy())
        rng = random.Random(mixed_seed("sample", self.seed, epoch, index))
        flip = augment.hflip and rng.random() < 0.5
        if augment.random_crop and size > 64:
            array = np.asarray(_open_rgb(path, 2 * size)).transpose(2, 0, 1).copy()
            full = torch.from_numpy(array)
            top, left, h, w = _resized_crop_box(full.shape[1], full.shape[2], augment.min_crop_scale, rng)
            image: torch.Tensor = TF.resized_crop(full, top, left, h, w, [size, size], antialias=True)
        else:
            image = torch.from_numpy(_decode_resized(path, size).transpose(2, 0, 1).copy())
            if augment.random_crop:
                padding = crop_padding(augment, size)
                offsets = torch.tensor([[rng.randint(0, 2 * padding)], [rng.randint(0, 2 * padding)]])
                image = _crop_with_padding(image[None], offsets, padding, None)[0]
        return TF.horizontal_flip(image) if flip else image


class _EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (record index, epoch) in the epoch's seeded order, from batch ``start`` on."""

    def __init__(self, num_images: int, batch_size: int, train: bool, seed: int, shard: Shard) -> None:
        self.shard = shard
        self.num_images = num_images
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return _num_batches(self.num_images, self.batch_size, self.train)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = _epoch_order(self.num_images, self.seed, self.epoch, self.train).tolist()
        for index in range(self.start, len(self)):
            low = index * self.batch_size
            batch = order[low : low + self.batch_size]
            first, last = self.shard.bounds(len(batch))  # this rank's slice of the global batch
            if first < last:  # a short evaluation batch may leave a rank nothing
                yield [(i, self.epoch) for i in batch[first:last]]


def _collate(samples: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([sample[0] for sample in samples])
    labels = torch.tensor([sample[1] for sample in samples], dtype=torch.int64)
    return images, labels, [sample[2] for sample in samples if sample[2] is not None]


class StreamingImages:
    """Images decoded from disk by ``num_workers`` DataLoader processes, for sets too big for memory.

    Same batches and order as ``InMemoryImages``; the augmentation is per image (torchvision's
    RandomResizedCrop above 64 px, a reflect-padded random crop up to it, a horizontal flip), seeded by
    (seed, epoch, image index), so a batch does not depend on the number of workers.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: int,
        *,
        batch_size: int,
        train: bool,
        augment: AugmentSpec,
        seed: int,
        device: torch.device,
        num_workers: int,
        root: Path | None = None,
        shard: Shard = ONE_PROCESS,
    ) -> None:
        self.num_images = len(records)
        self.device = device
        self._sampler = _EpochBatchSampler(len(records), batch_size, train, seed, shard)
        self._loader = DataLoader(
            _ImageFiles(records, image_size, train, augment, seed, root),
            batch_sampler=self._sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self._sampler)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self._sampler.epoch = epoch  # read when the loader's iterator starts, in this process
        self._sampler.start = start
        for images, labels, problems in self._loader:
            if problems:
                raise DatasetError("dataset_unreadable", problems)
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# --- normalization -----------------------------------------------------------------------------

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
    return _tensor_channel_stats(_decode_all(records, image_size, None, None))


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


# --- everything for a spec ---------------------------------------------------------------------


@dataclass
class DataBundle:
    class_names: list[str]
    train: BatchSource
    val: BatchSource | None  # None: trained on all of train/ (val_split 0, no val/)
    test: BatchSource | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    in_memory: bool
    counts: dict[str, int]  # images per split


def _num_workers(setting: int | str) -> int:
    if isinstance(setting, int):
        return setting
    return max(0, min(8, available_cpus() - 1))


def split_records(
    spec_data: DataSpec, *, source: Path, work_dir: Path, seed: int, settings: EngineSettings
) -> tuple[ImageFolderLayout, list[ImageRecord], list[ImageRecord] | None]:
    """The layout, and the train and validation records a run of ``spec_data`` uses (seeded); no validation
    records when the archive has no val/ and ``val_split`` is 0."""
    layout = scan_image_folder(resolve_source(source, work_dir, settings))
    train = layout.train
    if spec_data.subset_per_class is not None:
        train = subset_per_class(train, spec_data.subset_per_class, seed)
    val = layout.val
    if val is None and spec_data.val_split > 0:
        train, val = stratified_split(train, spec_data.val_split, seed)
    return layout, train, val


def validation_images(
    spec_data: DataSpec,
    image_size: int,
    *,
    source: Path,
    work_dir: Path,
    seed: int,
    settings: EngineSettings,
    count: int,
) -> torch.Tensor:
    """The first ``count`` validation images of a run (its test images, or its training images, when it has no
    validation set), decoded as evaluation decodes them: uint8 (N, 3, S, S)."""
    layout, train, val = split_records(spec_data, source=source, work_dir=work_dir, seed=seed, settings=settings)
    records = val if val is not None else (layout.test if layout.test is not None else train)
    return _decode_all(records[:count], image_size, None, layout.root)


def load_data(
    spec_data: DataSpec,
    image_size: int,
    *,
    source: Path,
    work_dir: Path,
    seed: int,
    device: torch.device,
    settings: EngineSettings,
    normalization: ChannelStats | None,
    shard: Shard = ONE_PROCESS,
) -> DataBundle:
    """Everything the fit loop reads, for a spec: the splits as batch sources and the normalization.

    resolve_source -> scan -> subset of train (``subset_per_class``) -> a stratified val split when there
    is no val/ -> decoded into memory (``in_memory``: True, or "auto" and it fits ``in_memory_max_mb``)
    or streamed. ``normalization`` None uses the train split's own channel statistics.
    """
    layout, train, val = split_records(spec_data, source=source, work_dir=work_dir, seed=seed, settings=settings)
    splits = {"train": train} | ({"val": val} if val is not None else {})
    splits |= {"test": layout.test} if layout.test is not None else {}
    total = decoded_bytes(sum(len(records) for records in splits.values()), image_size)
    in_memory = spec_data.in_memory is True or (
        spec_data.in_memory == "auto" and total <= settings.in_memory_max_mb * MIB
    )
    eval_batch_size = spec_data.eval_batch_size or 2 * spec_data.batch_size

    num_workers = _num_workers(spec_data.num_workers)

    def make(records: list[ImageRecord], train_split: bool) -> InMemoryImages | StreamingImages:
        batch_size = spec_data.batch_size if train_split else eval_batch_size
        if in_memory:
            return InMemoryImages(
                records,
                image_size,
                batch_size=batch_size,
                train=train_split,
                augment=spec_data.augment,
                seed=seed,
                device=device,
                root=layout.root,
                shard=shard,
            )
        return StreamingImages(
            records,
            image_size,
            batch_size=batch_size,
            train=train_split,
            augment=spec_data.augment,
            seed=seed,
            device=device,
            num_workers=num_workers,
            root=layout.root,
            shard=shard,
        )

    train_source = make(train, True)
    val_source = make(val, False) if val is not None else None  # val_split 0 and no val/: no validation
    test_source = make(layout.test, False) if layout.test is not None else None
    if normalization is None:
        stats_from = train_source if isinstance(train_source, InMemoryImages) else train
        normalization = channel_stats(stats_from, image_size, seed=seed)
    mean, std = normalization
    return DataBundle(
        class_names=layout.class_names,
        train=train_source,
        val=val_source,
        test=test_source,
        mean=mean,
        std=std,
        in_memory=in_memory,
        counts={split: len(records) for split, records in splits.items()},
    )
