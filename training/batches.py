"""Batches of uint8 images on the training device, from the records a run trains on.

- ``InMemoryImages`` decodes every image once into one ``(N, 3, S, S)`` uint8 tensor and augments whole
  batches on the device, with no Python work per image and no host syncs in ``batches``;
- ``StreamingImages`` decodes from disk in ``DataLoader`` worker processes, for sets too big to hold.

Every random choice is seeded from the run's seed, the epoch and the batch (or image) index, so a batch
is the same on any device, with any number of workers, and after a resume that skips into an epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from training.augment import _crop_with_padding, _resized_crop_box, augment_batch, crop_padding
from training.decoding import decode_problem, decode_resized, in_chunks, open_rgb
from training.distributed import ONE_PROCESS, Shard
from training.errors import DatasetError
from training.imagefolder import ImageRecord, display_name, display_root
from training.plan import train_batches
from training.seeds import mixed_seed
from training.spec import AugmentSpec


def decode_images(
    records: Sequence[ImageRecord], size: int, num_threads: int | None, root: Path | None
) -> torch.Tensor:
    """Every image decoded to one (N, 3, size, size) uint8 tensor; all failures raised together."""
    out = np.empty((len(records), 3, size, size), dtype=np.uint8)
    failures: list[str | None] = [None] * len(records)
    base = root if root is not None else display_root(records)

    def work(chunk: range) -> None:
        for i in chunk:
            path = records[i].path
            try:
                out[i] = decode_resized(path, size).transpose(2, 0, 1)
            except Exception as error:  # any decoder failure on untrusted bytes is this file's problem
                failures[i] = decode_problem(display_name(path, base), error)

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
        images = decode_images(records, image_size, num_threads, root)
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
                decode_problem(self.names[index], error),
            )
        return image, self.labels[index], None

    def _load(self, index: int, epoch: int) -> torch.Tensor:
        size, augment, path = self.image_size, self.augment, self.paths[index]
        if not self.train:
            return torch.from_numpy(decode_resized(path, size).transpose(2, 0, 1).copy())
        rng = random.Random(mixed_seed("sample", self.seed, epoch, index))
        flip = augment.hflip and rng.random() < 0.5
        if augment.random_crop and size > 64:
            array = np.asarray(open_rgb(path, 2 * size)).transpose(2, 0, 1).copy()
            full = torch.from_numpy(array)
            top, left, h, w = _resized_crop_box(full.shape[1], full.shape[2], augment.min_crop_scale, rng)
            image: torch.Tensor = TF.resized_crop(full, top, left, h, w, [size, size], antialias=True)
        else:
            image = torch.from_numpy(decode_resized(path, size).transpose(2, 0, 1).copy())
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
