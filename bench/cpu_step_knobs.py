"""The CPU training step's knobs, in one process, on random tensors (no data loading): ResNet-18 at 32 px,
batch 64, SGD with momentum; contiguous against channels_last, intra-op threads, and (``--compile``)
torch.compile. Rounds alternate the variants so that a shared machine's drift hits them alike; prints the
median images/s of each and its ratio to the default.

    .venv/bin/python bench/cpu_step_knobs.py [--steps 8] [--rounds 3] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

IMAGE_SIZE, BATCH, CLASSES = 32, 64, 10


def step_rate(channels_last: bool, threads: int, compiled: bool, steps: int) -> Callable[[], float]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=CLASSES)
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (BATCH,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(images), labels).backward()
        optimizer.step()

    def measure() -> float:
        torch.set_num_threads(threads)
        step()  # warm (and, compiled, compile on the first round)
        began = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * BATCH / (time.perf_counter() - began)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling on CPU)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    variants = {
        f"contiguous, {cores} threads (default)": step_rate(False, cores, False, args.steps),
        f"channels_last, {cores} threads": step_rate(True, cores, False, args.steps),
        "contiguous, 1 thread": step_rate(False, 1, False, args.steps),
    }
    if args.compile:
        variants[f"torch.compile, contiguous, {cores} threads"] = step_rate(False, cores, True, args.steps)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, measure in variants.items():
            rates[name].append(measure())
    default = statistics.median(next(iter(rates.values())))
    for name, found in rates.items():
        median = statistics.median(found)
        print(f"{name:<40} {median:7.1f} images/s  {median / default:5.2f}x  (rounds: {[round(r) for r in found]})")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min), torch {torch.__version__}")


if __name__ == "__main__":
    main()
