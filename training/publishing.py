"""Publishing a finished run: which weights to publish (the best epoch's, model or EMA, or the last epoch's
better of the two), and the files in the run folder: ``model.safetensors``, ``model.json`` (the model card),
``metrics.json`` and ``confusion.json`` (``training.artifacts`` names them), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from training import artifacts
from training.checkpoint import load_checkpoint, write_atomic
from training.export import export_state_dict, model_card, save_weights, write_card
from training.spec import Spec, monitor_mode
from training.state import TrainState

if TYPE_CHECKING:  # training.engine imports this module
    from training.engine import RunParts


def published_model(parts: RunParts, state: TrainState, spec: Spec, out_dir: Path) -> tuple[nn.Module, str, int]:
    """The weights to publish, loaded into the run's model (or EMA): (the module, "model" or "ema", its epoch)."""
    best = state.best
    if spec.training.final_weights == "best" and best is not None:
        if best["epoch"] != state.epoch:
            checkpoint = load_checkpoint(out_dir / "checkpoints" / best["checkpoint"])
            parts.model.load_state_dict(checkpoint["model"])
            if parts.ema is not None and checkpoint["ema"] is not None:
                parts.ema.load_state_dict(checkpoint["ema"])
        source, epoch = best["source"], best["epoch"]
    else:
        last = state.history[-1]
        monitor = parts.plan.monitor
        ema_value = last.get(f"ema_{monitor}") if monitor is not None else None
        source = "model"
        if ema_value is not None and monitor is not None:
            better = ema_value < last[monitor] if monitor_mode(monitor) == "min" else ema_value > last[monitor]
            source = "ema" if better else "model"
        epoch = state.epoch
    module = parts.ema.module if source == "ema" and parts.ema is not None else parts.model
    return module, source, epoch


def publish(
    out_dir: Path,
    module: nn.Module,
    parts: RunParts,
    state: TrainState,
    spec: Spec,
    *,
    status: str,
    metrics: dict[str, Any],
    confusion: dict[str, Any],
) -> tuple[Path, Path]:
    """Write the published weights, their card, metrics.json and confusion.json; (weights path, card path)."""
    weights_path = out_dir / artifacts.WEIGHTS
    card_path = out_dir / artifacts.CARD
    save_weights(weights_path, export_state_dict(module), {"backbone": parts.built.info.name})
    card = model_card(
        parts.built,
        class_names=parts.data.class_names,
        image_size=spec.image_size,
        mean=parts.data.mean,
        std=parts.data.std,
        metrics={"published": metrics, "best": state.best, "last": state.history[-1]},
        spec=spec.model_dump(mode="json"),
    )
    write_card(card_path, card)
    record = {"status": status, "epochs": state.history, "published": metrics}
    write_atomic(out_dir / artifacts.METRICS, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    write_atomic(out_dir / artifacts.CONFUSION, lambda tmp: tmp.write_text(json.dumps(confusion) + "\n"))
    return weights_path, card_path
