"""Time to accuracy, the airbench way (issue 14): from scratch on CIFAR-10 at 32 px on this CPU, the training time
the engine with an ``examples/`` recipe needs to reach the test accuracy that the article's recipe reaches in 5
epochs (ResNet-18, SGD 0.01, momentum 0.9, weight decay 5e-4, no schedule, no augmentation, batch 64). Goal: at
most half the article's time.

The clock runs while a recipe trains and stops while the test set is evaluated after each epoch (the article's
loop decodes its JPEGs inside its epochs; the engine's clock starts before its setup, so it pays its one decode
and the data set's statistics too). Both run in this process, one after the other, with the same intra-op threads.
Writes both curves (test accuracy against training seconds) to a PNG and the figures to JSON.

    .venv/bin/python -m bench.time_to_accuracy [--per-class 1000] [--test-per-class 500]
        [--recipe examples/cifar10-time-to-accuracy.yaml] [--out docs/time-to-accuracy] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
import yaml
from torch import nn
from torchvision import datasets, transforms

from bench.engine_bench import extract
from bench.engine_vs_seed import ARCHIVE
from training.callbacks import Callbacks
from training.engine import Trainer
from training.settings import EngineSettings
from training.spec import Spec

REPO = Path(__file__).resolve().parents[1]
ARTICLE_EPOCHS = 5


def article_curve(root: Path, epochs: int) -> list[dict[str, float]]:
    """The article's loop; (training seconds so far, test accuracy) after each epoch."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(root / "train", transform=transform), 64, shuffle=True)
    test = torch.utils.data.DataLoader(datasets.ImageFolder(root / "test", transform=transform), 64)
    torch.manual_seed(0)
    clock = time.perf_counter()
    model = torchvision.models.get_model("resnet18", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    seconds, curve = 0.0, []
    for epoch in range(epochs):
        model.train()
        for inputs, labels in train:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            loss.item()  # the article prints a running loss
        seconds += time.perf_counter() - clock
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for inputs, labels in test:
                correct += int((model(inputs).argmax(1) == labels).sum())
                total += labels.shape[0]
        curve.append({"epoch": epoch + 1, "seconds": round(seconds, 2), "test_acc": correct / total})
        print(f"article epoch {epoch + 1}: {seconds:.1f} s, test accuracy {correct / total:.4f}", flush=True)
        clock = time.perf_counter()
    return curve


class Clock(Callbacks):
    """The engine's training clock: wall time since ``fit`` began, less its evaluation passes."""

    def __init__(self, train_images: int) -> None:
        self.started = time.perf_counter()
        self.train_images = train_images
        self.evaluating = 0.0
        self.curve: list[dict[str, float]] = []

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        # An epoch's seconds are its training pass (images / images_per_second) and its evaluation.
        self.evaluating += metrics["epoch_seconds"] - self.train_images / metrics["images_per_second"]
        seconds = now - self.started - self.evaluating
        self.curve.append({"epoch": metrics["epoch"], "seconds": round(seconds, 2), "test_acc": metrics["test_acc"]})
        print(f"engine epoch {metrics['epoch']}: {seconds:.1f} s, test accuracy {metrics['test_acc']:.4f}", flush=True)


def engine_curve(
    root: Path, recipe: Path, out: Path, threads: int | None
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    raw = yaml.safe_load(recipe.read_text())
    raw["data"] = {**raw["data"], "path": str(root), "val_split": 0}
    raw["data"].pop("subset_per_class", None)  # the benchmark's own subset
    raw["training"] = {**raw.get("training", {}), "monitor": "test_acc"}  # evaluates test/ after every epoch
    spec = Spec.model_validate(raw)
    clock = Clock(train_images=sum(1 for _ in (root / "train").rglob("*.jpg")))
    Trainer(spec, out, callbacks=clock, settings=EngineSettings(torch_threads=threads)).fit()
    return clock.curve, spec.model_dump(mode="json")


def time_to(curve: list[dict[str, float]], accuracy: float) -> float | None:
    """The training seconds at the first epoch whose test accuracy reaches ``accuracy``."""
    return next((point["seconds"] for point in curve if point["test_acc"] >= accuracy), None)


def plot(article: list[dict[str, float]], engine: list[dict[str, float]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for label, curve, style in (("article's recipe", article, "o-"), ("engine recipe", engine, "s-")):
        axes.plot([0] + [p["seconds"] for p in curve], [0.1] + [p["test_acc"] for p in curve], style, label=label)
    axes.axhline(target, color="grey", linestyle=":", label="article's 5-epoch accuracy")
    axes.set_xlabel("training seconds (evaluation excluded)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Time to accuracy, ResNet-18 from scratch, CIFAR-10 at 32 px, CPU")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class (1000: 10,000)")
    parser.add_argument("--test-per-class", type=int, default=500, help="test images per class")
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "cifar10-time-to-accuracy.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "time-to-accuracy", help="writes OUT.png, OUT.json")
    parser.add_argument("--threads", type=int, help="intra-op threads of both (default: the engine's own choice)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = extract(args.archive, Path(tmp) / "cifar", {"train": args.per_class, "test": args.test_per_class})
        article = article_curve(root, ARTICLE_EPOCHS)
        engine, spec = engine_curve(root, args.recipe, Path(tmp) / "run", args.threads)
    target = article[-1]["test_acc"]
    article_seconds = article[-1]["seconds"]
    engine_seconds = time_to(engine, target)
    result = {
        "date": started,
        "load_average": {"before": [round(v, 1) for v in load_before], "after": [round(v, 1) for v in os.getloadavg()]},
        "threads": torch.get_num_threads(),
        "train_images": args.per_class * 10,
        "test_images": args.test_per_class * 10,
        "target_test_acc": target,
        "article_seconds": article_seconds,
        "engine_seconds_to_target": engine_seconds,
        "engine_of_article": round(engine_seconds / article_seconds, 3) if engine_seconds is not None else None,
        "article": article,
        "engine": engine,
        "engine_spec": spec,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(article, engine, target, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("article", "engine", "engine_spec")}, indent=2))


if __name__ == "__main__":
    main()
