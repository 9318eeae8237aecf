"""The torch-free half of the engine stays torch-free: the service imports it, and torch takes seconds."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = (
    "training.archives",
    "training.imagefolder",
    "training.decoding",
    "training.splits",
    "training.seeds",
    "training.dataset_check",
    "training.plan",
    "training.catalog",
    "app.main",
)


def test_the_data_modules_the_service_imports_load_no_torch():
    heavy = ("torch", "torchvision")
    code = f"import sys, {', '.join(TORCH_FREE)}; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
