"""Where and in what numerics a run computes: the device, the autocast precision, the memory format,
and the process-wide switches (determinism, seeds) that go with them."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from training.backbones import family_of
from training.decoding import available_cpus
from training.errors import DeviceUnavailable, TrainingError
from training.spec import Spec


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    grad_scaler: bool  # fp16 on CUDA

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_runtime(spec: Spec) -> Runtime:
    """The device and numerics a spec asks for, checked against what this machine has."""
    t = spec.training
    cuda = torch.cuda.is_available()
    if t.device == "cuda" and not cuda:
        raise DeviceUnavailable("training.device: cuda was asked for, and this machine has no CUDA device")
    device = torch.device("cuda" if t.device != "cpu" and cuda else "cpu")
    on_cuda = device.type == "cuda"
    if t.precision == "fp16" and not on_cuda:
        raise TrainingError("training.precision: fp16 needs a CUDA device; use bf16 or fp32", code="invalid_spec")
    dtype: torch.dtype | None = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    if t.precision == "auto":
        # oneDNN's bf16 kernels are not deterministic: a deterministic run on the CPU stays in fp32.
        native_bf16 = torch.cuda.is_bf16_supported() if on_cuda else cpu_has_native_bf16() and not t.deterministic
        dtype = torch.bfloat16 if native_bf16 else None
    convolutional = family_of(spec.backbone.name).convolutional
    channels_last = on_cuda and convolutional if t.channels_last == "auto" else bool(t.channels_last)
    return Runtime(device, dtype, channels_last, grad_scaler=dtype is torch.float16)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX): then bf16 autocast is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism
        # warn_only: a few CUDA kernels (adaptive pooling's backward) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        torch.set_float32_matmul_precision("high")  # TF32 on Ampere and later


def configure_threads(requested: int | None, ranks_here: int = 1) -> int:
    """Set PyTorch's intra-op threads: ``requested``, or the cores this process may run on (its CPU affinity, which
    a container's cpuset or taskset narrows; PyTorch's own default counts the machine's cores) divided among the
    ``ranks_here`` processes a distributed run starts on this machine. One thread per core it really has: a
    thread more waits at every barrier for a core (bench/cpu_step_knobs.py measured 1 thread 9x faster than 2
    on 2 busy cores). Returns the count set."""
    if requested is None:
        requested = max(1, available_cpus() // max(1, ranks_here))
    if torch.get_num_threads() != requested:
        torch.set_num_threads(requested)
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
