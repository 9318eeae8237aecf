"""A tiny learnable image set and specs over it, for engine tests that run in seconds on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training.spec import Spec

CLASSES = ("blue", "green", "red")


def write_colour_set(root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """root/<split>/<class>/i.png: noisy images whose dominant channel is the class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            channel = 2 - label  # blue, green, red -> channels 2, 1, 0
            for i in range(count):
                pixels = rng.integers(0, 120, (size, size, 3))
                pixels[..., channel] += 100
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def colour_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train and 6 test images per class, 16x16."""
    return write_colour_set(tmp_path_factory.mktemp("colours"), {"train": 24, "test": 6})


def tiny_spec(root: Path, /, **sections: Any) -> Spec:
    """A spec that trains resnet18 on ``root`` in a few seconds; ``sections`` override whole keys."""
    spec: dict[str, Any] = {
        "backbone": {"name": "resnet18"},
        "data": {"path": str(root), "image_size": 16, "batch_size": 8, "val_split": 0.25},
        "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
        # fp32: exact comparisons; the CPU's bf16 has its own test.
        "training": {"epochs": 2, "seed": 0, "deterministic": True, "log_every_steps": 1, "precision": "fp32"},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return Spec.model_validate(spec)
