"""Evaluation passes: a split's loss and accuracies, its confusion matrix, and the passes an epoch's end and a
run's end make (validation, test where a test_ metric is watched, the EMA weights; the published weights').

A pass does not wait on the device per batch: its sums and the confusion counts stay on the device and the host
reads them once, at the pass's end. Under DDP each rank evaluates its shard of every batch and the sums are
over the ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from training.normalization import normalize
from training.runtime import Runtime

if TYPE_CHECKING:  # training.distributed imports the engine, which imports this module
    from training.distributed import Cluster
    from training.engine import RunParts


@torch.inference_mode()
def evaluate_split(
    model: nn.Module, source: Any, parts: RunParts, runtime: Runtime, cluster: Cluster, *, confusion: bool
) -> tuple[dict[str, float], list[list[int]] | None]:
    """Loss (plain cross entropy), accuracy and top-5 accuracy (more than five classes) on a split, and with
    ``confusion`` its confusion matrix: rows are true classes, columns predicted ones."""
    model.eval()
    cluster.sync_buffers(model)  # rank 0's batch norm statistics on every rank
    device = runtime.device
    classes = parts.num_classes
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    # counts[true * classes + predicted], on the device: no host sync per batch
    counts = torch.zeros(classes * classes, dtype=torch.long, device=device) if confusion else None
    top5 = classes > 5
    seen = 0
    for images, labels in source.batches(0):
        if labels.shape[0] == 0:  # a rank's empty shard of a short last batch
            continue
        x = normalize(images, parts.mean, parts.std, channels_last=runtime.channels_last)
        with runtime.autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        predicted = logits.argmax(dim=1)
        correct += (predicted == labels).sum()
        if top5:
            correct5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
        if counts is not None:
            counts += torch.bincount(labels * classes + predicted, minlength=classes * classes)
        seen += labels.shape[0]
    # One host sync; the ratios in float64 on the host, so that an accuracy is exactly correct / seen.
    totals = torch.stack([loss_sum.double(), correct.double(), correct5.double(), torch.tensor(seen).to(loss_sum)])
    loss, hits, hits5, seen_all = cluster.all_sum(totals).tolist()
    seen = max(int(seen_all), 1)
    metrics = {"loss": loss / seen, "acc": hits / seen}
    if top5:
        metrics["acc_top5"] = hits5 / seen
    matrix = cluster.all_sum(counts).view(classes, classes).tolist() if counts is not None else None
    return metrics, matrix


def epoch_evaluation(parts: RunParts, runtime: Runtime, cluster: Cluster) -> dict[str, float]:
    """An epoch's end: validation, test where a test_ metric picks the best epoch, and the EMA weights on
    validation; prefixed ``val_``, ``test_``, ``ema_val_``."""
    data = parts.data
    metrics: dict[str, float] = {}
    if data.val is not None:
        val = evaluate_split(parts.model, data.val, parts, runtime, cluster, confusion=False)[0]
        metrics.update({f"val_{k}": v for k, v in val.items()})
    if parts.plan.test_every_epoch and data.test is not None:
        test = evaluate_split(parts.model, data.test, parts, runtime, cluster, confusion=False)[0]
        metrics.update({f"test_{k}": v for k, v in test.items()})
    if parts.ema is not None and data.val is not None:
        ema = evaluate_split(parts.ema.module, data.val, parts, runtime, cluster, confusion=False)[0]
        metrics.update({f"ema_val_{k}": v for k, v in ema.items()})
    return metrics


def final_evaluation(
    module: nn.Module, parts: RunParts, runtime: Runtime, cluster: Cluster
) -> tuple[dict[str, Any], dict[str, float] | None, dict[str, Any]]:
    """The published weights on validation and test: (``val_`` metrics, ``test_`` metrics or None where there is
    no test split, the confusion record of both)."""
    data = parts.data
    final: dict[str, Any] = {}
    confusion: dict[str, Any] = {"class_names": data.class_names, "val": None, "test": None}
    if data.val is not None:
        val_metrics, val_matrix = evaluate_split(module, data.val, parts, runtime, cluster, confusion=True)
        assert val_matrix is not None
        final = {f"val_{k}": v for k, v in val_metrics.items()}
        confusion["val"] = confusion_record(val_matrix)
    test = None
    if data.test is not None:
        test_metrics, test_matrix = evaluate_split(module, data.test, parts, runtime, cluster, confusion=True)
        assert test_matrix is not None
        test = {f"test_{k}": v for k, v in test_metrics.items()}
        confusion["test"] = confusion_record(test_matrix)
    return final, test, confusion


def confusion_record(matrix: list[list[int]]) -> dict[str, Any]:
    """A split's confusion matrix (rows: true class, columns: predicted) with each class's accuracy (its recall;
    None for a class the split has no images of)."""
    per_class = [row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)]
    return {"matrix": matrix, "per_class_accuracy": per_class, "images": sum(map(sum, matrix))}
