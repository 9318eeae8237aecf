"""Throughput of one job on 1 and on 2 processes (DDP over gloo) on this machine's CPU cores.

The same spec (ResNet-18 at 32 px, batch 64 global, fp32) on a CIFAR-10 subset, run alternately on 1 and 2
processes; images per second are of training only (the engine's own epoch figure, all ranks' images over
the epoch's seconds), epochs after the first, medians reported. On a 2-core host, two ranks get one thread
each where one process gets two: DDP buys nothing there unless the per-step framework overhead is large.

    .venv/bin/python -m bench.devices_cpu [--per-class 100] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from bench.engine_vs_seed import ARCHIVE, extract_subset
from training.callbacks import Callbacks
from training.distributed import fit_on_devices
from training.spec import Spec


def spec(root: Path, devices: int, epochs: int) -> Spec:
    return Spec.model_validate(
        {
            "backbone": {"name": "resnet18"},
            "data": {"path": str(root), "image_size": 32, "batch_size": 64},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "training": {"epochs": epochs, "precision": "fp32", "devices": devices, "log_every_steps": 50},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    found: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = extract_subset(ARCHIVE, Path(tmp) / "cifar", args.per_class)
        for round_ in range(args.rounds):
            for devices in (1, 2):
                result = fit_on_devices(
                    spec(root, devices, args.epochs), Path(tmp) / f"run-{devices}-{round_}", callbacks=Callbacks()
                )
                found[devices] += [h["images_per_second"] for h in result.history[1:]]
    report = {
        "cpus": os.cpu_count(),
        "torch_threads_one_process": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "images_per_second": {f"{d} process(es)": round(statistics.median(v), 1) for d, v in found.items()},
        "all": {d: [round(x, 1) for x in v] for d, v in found.items()},
    }
    report["ratio_2_over_1"] = round(statistics.median(found[2]) / statistics.median(found[1]), 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
