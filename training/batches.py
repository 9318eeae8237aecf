"""Batches of uint8 images on the training device, from the records a run trains on.

- ``InMemoryImages`` decodes every image once into one ``(N, 3, S, S)`` uint8 tensor and augments whole
  batches on the device, with no Python work per image and no host syncs in ``batches``;
- ``StreamingImages`` decodes from disk in ``DataLoader`` worker processes, for sets too big to hold.

Every random choice is seeded from the run's seed, the epoch and the batch (or image) index, so a batch
is the same on any device, with any number of workers, and after a resume that skips into an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.augment import augment_batch
from training.decoding import decode_problem, decode_resized, in_chunks
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
            whole = min(self.batch_size, self.num_images - low)
            first, last = self.shard.bounds(whole)  # this rank's slice of the global batch
            images = self._gather(order, order_on_device, low + first, low + last)
            labels = self.labels[order_on_device[low + first : low + last]]
            if self.train:  # the global batch's draws: the same at any process count
                images = augment_batch(images, self.augment, self.seed, epoch, index, whole=whole, first=first)
            yield images, labels

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
    """Images decoded from disk as evaluation decodes them (resized, center-cropped); a decoding failure
    comes back as a problem naming the file, for the main process to report."""

    def __init__(self, records: Sequence[ImageRecord], image_size: int, root: Path | None) -> None:
        base = root if root is not None else display_root(records)
        self.paths = [record.path for record in records]
        self.labels = [record.label for record in records]
        self.names = [display_name(record.path, base) for record in records]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Sample:
        size = self.image_size
        try:
            image = torch.from_numpy(decode_resized(self.paths[index], size).transpose(2, 0, 1).copy())
        except Exception as error:  # reported by the main process, with the file's name
            return (
                torch.zeros(3, size, size, dtype=torch.uint8),
                self.labels[index],
                decode_problem(self.names[index], error),
            )
        return image, self.labels[index], None


@dataclass(frozen=True)
class _RankBatch:
    index: int  # the batch's index in the epoch
    whole: int  # images in the global batch
    first: int  # this rank's first row of it
    records: list[int]  # this rank's rows, as record indices


class _EpochBatchSampler(Sampler[list[int]]):
    """This rank's rows of each batch, in the epoch's seeded order, from batch ``start`` on."""

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

    def rank_batches(self) -> Iterator[_RankBatch]:
        order = _epoch_order(self.num_images, self.seed, self.epoch, self.train).tolist()
        for index in range(self.start, len(self)):
            low = index * self.batch_size
            batch = order[low : low + self.batch_size]
            first, last = self.shard.bounds(len(batch))  # this rank's slice of the global batch
            if first < last:  # a short evaluation batch may leave a rank nothing
                yield _RankBatch(index, len(batch), first, batch[first:last])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.rank_batches():
            yield batch.records


def _collate(samples: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([sample[0] for sample in samples])
    labels = torch.tensor([sample[1] for sample in samples], dtype=torch.int64)
    return images, labels, [sample[2] for sample in samples if sample[2] is not None]


class StreamingImages:
    """Images decoded from disk by ``num_workers`` DataLoader processes, for sets too big for memory.

    The same batches as ``InMemoryImages``, pixel for pixel: the workers decode (resized, center-cropped) and
    the batch is augmented on the device by the same ``augment_batch``, seeded by (seed, epoch, batch index),
    so a batch does not depend on the number of workers, nor on whether the set fits in memory.
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
        self.train = train
        self.augment = augment
        self.seed = seed
        self._sampler = _EpochBatchSampler(len(records), batch_size, train, seed, shard)
        self._loader = DataLoader(
            _ImageFiles(records, image_size, root),
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
        for batch, (images, labels, problems) in zip(self._sampler.rank_batches(), self._loader, strict=True):
            if problems:
                raise DatasetError("dataset_unreadable", problems)
            images = images.to(self.device, non_blocking=True)
            if self.train:
                images = augment_batch(
                    images, self.augment, self.seed, epoch, batch.index, whole=batch.whole, first=batch.first
                )
            yield images, labels.to(self.device, non_blocking=True)
