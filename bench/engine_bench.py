"""The engine on the CPU against a bare loop and against the article's, two measurements (issue 14):

``throughput``: in one process, a bare forward-backward-step loop (the engine's own model, batch size, image
size and numerics, on tensors already in memory, SGD with momentum) against the engine's training images per
second (``images_per_second`` of an epoch after a warm-up one: the training pass only, evaluation apart). The two
alternate, ``--rounds`` times, and the medians are compared (goal: the engine at 95% of the bare loop or more).
``--threads N`` sets the intra-op threads of both (the engine through its ``FT_TORCH_THREADS`` setting), in
either measurement.

``job``: the whole one-epoch job as whole processes, wall time from the process's start to its exit: ResNet-18
from scratch, batch 64, ``--per-class`` x 10 CIFAR-10 JPEGs (5,000 by default), one epoch, then the test pass on
``--test-per-class`` x 10 test images; the article's loop (``bench/engine_vs_seed.py``'s, with its test pass)
against ``python -m training run`` with the article's recipe (no augmentation, no validation split). The runs
alternate, medians compared (goal: the engine's wall time at most the article's).

    .venv/bin/python -m bench.engine_bench throughput [--per-class 100] [--rounds 3] [--threads N]
    .venv/bin/python -m bench.engine_bench job [--per-class 500] [--test-per-class 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.engine_vs_seed import ARCHIVE, Throughput
from training.backbones import build_model
from training.engine import Trainer
from training.normalization import normalize
from training.runtime import resolve_runtime
from training.settings import EngineSettings
from training.spec import Spec

BACKBONE, BATCH, SIZE, CLASSES = "resnet18", 64, 32, 10


def extract(archive: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """<split>/<class>/ with the first ``per_class[split]`` images of each class of each split named."""
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.removeprefix("./").split("/")
            if len(parts) != 3 or parts[0] not in per_class or not member.isreg():
                continue
            if int(parts[2][:4]) < per_class[parts[0]]:
                source = tar.extractfile(member)
                assert source is not None
                target = dest / parts[0] / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read())
    return dest


def article_spec(root: Path, *, epochs: int, augment: bool, precision: str = "auto") -> dict[str, Any]:
    """The article's recipe as an engine spec: SGD 0.01, momentum 0.9, weight decay 5e-4, no schedule."""
    return {
        "backbone": {"name": BACKBONE},
        "data": {
            "path": str(root),
            "image_size": SIZE,
            "batch_size": BATCH,
            "val_split": 0,
            "augment": {"hflip": augment, "random_crop": augment},
        },
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "regularization": {"weight_decay": 5e-4, "decay_norm_and_bias": True},  # L2 on all, as the article's SGD
        "scheduler": {"name": "constant"},
        "training": {"epochs": epochs, "seed": 0, "precision": precision, "log_every_steps": 50},
    }


# --- throughput: the bare step against the engine, in this process --------------------------------------------


def bare_rate(spec: Spec, steps: int, settings: EngineSettings) -> float:
    """Images per second of a bare step loop: the engine's model and numerics, inputs already in memory."""
    runtime = resolve_runtime(spec)
    torch.manual_seed(0)
    model = build_model(spec.backbone, CLASSES, SIZE, settings=settings).model
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (BATCH,))
    mean = torch.full((1, 3, 1, 1), 0.5)

    def step() -> None:
        x = normalize(images, mean, mean, channels_last=runtime.channels_last)
        with runtime.autocast():
            logits = model(x)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(steps):  # a warm-up epoch, as the engine's first (allocator, oneDNN primitives)
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def engine_rate(spec: Spec, out: Path, settings: EngineSettings) -> float:
    """The engine's training images per second in its second epoch (the first warms up)."""
    meter = Throughput()
    Trainer(spec, out, callbacks=meter, settings=settings).fit()
    return float(meter.epochs[-1]["images_per_second"])


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    settings = EngineSettings(torch_threads=args.threads)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {"bare": [], "engine": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = extract(args.archive, Path(tmp) / "cifar", {"train": args.per_class})
        spec = Spec.model_validate(article_spec(root, epochs=2, augment=True, precision=args.precision))
        steps = -(-args.per_class * CLASSES // BATCH)  # an epoch's steps
        for round_ in range(args.rounds):  # alternate: a noisy neighbour hits both alike
            rates["bare"].append(bare_rate(spec, steps, settings))
            rates["engine"].append(engine_rate(spec, Path(tmp) / f"run-{round_}", settings))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "measure": "training images per second, in one process",
        "train_images": args.per_class * CLASSES,
        "precision": resolve_runtime(spec).precision,
        "threads": torch.get_num_threads(),
        "median": {name: round(value, 1) for name, value in medians.items()},
        "all": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "engine_of_bare": round(medians["engine"] / medians["bare"], 3),
    }


# --- job: whole processes, the article's loop against the engine's CLI ---------------------------------------

ARTICLE_JOB = """
import sys, time, torch, torchvision
from torch import nn
from torchvision import datasets, transforms
root, batch = sys.argv[1], int(sys.argv[2])
transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
trainloader = torch.utils.data.DataLoader(datasets.ImageFolder(root + "/train", transform=transform),
                                          batch_size=batch, shuffle=True)
testloader = torch.utils.data.DataLoader(datasets.ImageFolder(root + "/test", transform=transform),
                                         batch_size=batch, shuffle=False)
torch.manual_seed(0)
model = torchvision.models.get_model("resnet18", num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
criterion = nn.CrossEntropyLoss()
model.train()
running_loss = 0.0
for inputs, labels in trainloader:
    optimizer.zero_grad()
    loss = criterion(model(inputs), labels)
    loss.backward()
    optimizer.step()
    running_loss += loss.item() * inputs.size(0)
model.eval()
correct = total = 0
with torch.no_grad():
    for inputs, labels in testloader:
        correct += (model(inputs).argmax(1) == labels).sum().item()
        total += labels.size(0)
torch.save(model.state_dict(), root + "/../article.pt")
print(f"test accuracy {correct / total:.4f}")
"""


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def job(args: argparse.Namespace) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {"article": [], "engine": []}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.threads is not None:  # both processes: torch reads OMP_NUM_THREADS, the engine FT_TORCH_THREADS
        env |= {"OMP_NUM_THREADS": str(args.threads), "FT_TORCH_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        root = extract(args.archive, Path(tmp) / "cifar", {"train": args.per_class, "test": args.test_per_class})
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(article_spec(root, epochs=1, augment=False, precision=args.precision)))
        for round_ in range(args.rounds):
            article = [sys.executable, "-c", ARTICLE_JOB, str(root), str(BATCH)]
            seconds["article"].append(timed(article, env))
            engine = [sys.executable, "-m", "training", "run", str(spec_path), "--out", f"{tmp}/run-{round_}"]
            seconds["engine"].append(timed(engine, env))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "measure": "wall seconds of the whole process: one epoch and the test pass",
        "train_images": args.per_class * CLASSES,
        "test_images": args.test_per_class * CLASSES,
        "median": {name: round(value, 1) for name, value in medians.items()},
        "all": {name: [round(v, 1) for v in values] for name, values in seconds.items()},
        "engine_of_article": round(medians["engine"] / medians["article"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "job"])
    parser.add_argument("--per-class", type=int, help="train images per class (throughput: 100, job: 500)")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the engine's own choice)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    args = parser.parse_args()
    args.per_class = args.per_class or (100 if args.what == "throughput" else 500)
    result = throughput(args) if args.what == "throughput" else job(args)
    load = os.getloadavg()
    result |= {"load_average": [round(v, 1) for v in load], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
