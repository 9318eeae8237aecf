"""The data of a run, for a spec: its splits as batch sources and its input normalization.

``load_data`` is what the fit loop reads; the torch-free steps before it (archive, scan, split plan)
are ``training.archives``, ``training.imagefolder`` and ``training.splits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from training.archives import MIB
from training.batches import BatchSource, InMemoryImages, StreamingImages, decode_images, decoded_bytes
from training.decoding import available_cpus
from training.distributed import ONE_PROCESS, Shard
from training.imagefolder import ImageRecord
from training.normalization import ChannelStats, channel_stats
from training.settings import EngineSettings
from training.spec import DataSpec
from training.splits import split_records


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
    return decode_images(records[:count], image_size, None, layout.root)


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

    # The two sources take the same arguments; streaming adds its loader processes.
    build = InMemoryImages if in_memory else partial(StreamingImages, num_workers=_num_workers(spec_data.num_workers))

    def make(records: list[ImageRecord], train_split: bool) -> InMemoryImages | StreamingImages:
        return build(
            records,
            image_size,
            batch_size=spec_data.batch_size if train_split else eval_batch_size,
            train=train_split,
            augment=spec_data.augment,
            seed=seed,
            device=device,
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
