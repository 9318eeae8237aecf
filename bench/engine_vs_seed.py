"""Throughput of the engine against the seed article's training loop, on the same machine.

Both train the same backbone from scratch at the same batch size on the same CIFAR-10 JPEG images.
The seed loop is the article's own: torchvision ``ImageFolder`` + ``DataLoader`` (no workers, as it
is written there), ``ToTensor`` and ``Normalize`` per image, ``loss.item()`` every step. The engine
runs a spec with its defaults (metrics on, augmentation on, precision auto), and once more in fp32.
Images per second are of training only, whole epochs after a warm-up; the runs alternate and the
medians are compared, because a shared machine's speed drifts by tens of percent.

    .venv/bin/python bench/engine_vs_seed.py [--per-class 500] [--backbone resnet18] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

from training.callbacks import Callbacks
from training.engine import Trainer
from training.spec import Spec

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def extract_subset(archive: Path, dest: Path, per_class: int) -> Path:
    """train/<class>/ with the first ``per_class`` images of each class (5000: all of them)."""
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.removeprefix("./").split("/")
            if len(parts) == 3 and parts[0] == "train" and member.isreg() and int(parts[2][:4]) < per_class:
                source = tar.extractfile(member)
                assert source is not None
                target = dest / "train" / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read())
    return dest


def seed_loop(root: Path, backbone: str, batch_size: int, epochs: int) -> list[float]:
    """The article's loop: images per second of each of ``epochs`` epochs, after one warm-up epoch."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as the article sets it
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = datasets.ImageFolder(root / "train", transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=batch_size, shuffle=True)
    torch.manual_seed(0)
    model = torchvision.models.get_model(backbone, num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs + 1):
        model.train()
        running_loss, seen, started = 0.0, 0, time.perf_counter()
        for inputs, labels in trainloader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            seen += labels.size(0)
        rates.append(seen / (time.perf_counter() - started))
    return rates[1:]


class Throughput(Callbacks):
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_epoch(self, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)


def engine_loop(root: Path, backbone: str, batch_size: int, epochs: int, out: Path, precision: str) -> list[float]:
    """The engine with its defaults: images per second of each epoch after one warm-up epoch."""
    spec = Spec.model_validate(
        {
            "backbone": {"name": backbone},
            "data": {"path": str(root), "image_size": 32, "batch_size": batch_size, "val_split": 0.02},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "training": {"epochs": epochs + 1, "seed": 0, "precision": precision},
        }
    )
    meter = Throughput()
    Trainer(spec, out, callbacks=meter).fit()
    return [m["images_per_second"] for m in meter.epochs[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round, after a warm-up epoch")
    parser.add_argument("--rounds", type=int, default=2, help="seed and engine alternate this many times")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"seed": [], "engine": [], "engine_fp32": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = extract_subset(args.archive, Path(tmp) / "cifar", args.per_class)
        for round_ in range(args.rounds):  # alternate, so that a noisy neighbour hits both alike
            rates["seed"] += seed_loop(root, args.backbone, args.batch_size, args.epochs)
            for name, precision in (("engine", "auto"), ("engine_fp32", "fp32")):
                out = Path(tmp) / f"{name}-{round_}"
                rates[name] += engine_loop(root, args.backbone, args.batch_size, args.epochs, out, precision)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "train_images": args.per_class * 10,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "images_per_second_median": {name: round(value, 1) for name, value in medians.items()},
        "images_per_second_all": {name: [round(v) for v in values] for name, values in rates.items()},
        "ratio": round(medians["engine"] / medians["seed"], 2),
        "ratio_fp32": round(medians["engine_fp32"] / medians["seed"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
