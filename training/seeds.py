"""Seeds derived from a run's seed: stable across runs, processes and devices, one per purpose.

No torch here. Every random draw of the data path (split, subset, epoch order, augmentation) takes its
seed from ``mixed_seed``, keyed by what it is for, so draws for different purposes never share a stream;
``batch_seed`` is the seed of one batch's draws, which depend on (seed, epoch, batch) alone: the same on
any device, with any number of workers or processes, and after a resume.
"""

from __future__ import annotations

import hashlib


def mixed_seed(*parts: str | int) -> int:
    """A 63-bit seed from a tuple: stable across runs and processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def batch_seed(purpose: str, seed: int, epoch: int, batch: int) -> int:
    """The seed of one batch's random draws for ``purpose`` ("augment", "mixup", ...): the same on any device
    and after a resume that skips into the epoch."""
    return mixed_seed(purpose, seed, epoch, batch)
