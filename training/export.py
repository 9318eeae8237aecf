"""Published weights: ``model.safetensors`` and the model card ``model.json`` that says how to use them.

With a plain head, the weights load with ``strict=True`` into
``torchvision.models.get_model(name, **card["torchvision_kwargs"])``; with a custom head the card
lists its layers, and ``load_exported`` rebuilds it. Nothing of this project is needed to use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from training.backbones import BuiltModel, build_head_from_description, describe_head, set_submodule
from training.checkpoint import write_atomic

CARD_FORMAT = "finetune-model-card/1"


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous (channels_last undone) copies of the weights, as safetensors wants them."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def model_card(
    built: BuiltModel,
    *,
    class_names: list[str],
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    metrics: dict[str, Any],
    spec: dict[str, Any],
) -> dict[str, Any]:
    head = built.model.get_submodule(built.family.head)
    plain = not isinstance(head, nn.Sequential)
    kwargs = built.torchvision_kwargs
    rebuild = [
        "import torchvision, safetensors.torch",
        f"model = torchvision.models.get_model({built.info.name!r}, **{kwargs!r})",
    ]
    if not plain:
        rebuild.append(f"# replace model.{built.family.head} with the layers under head.layers, then:")
    rebuild.append("model.load_state_dict(safetensors.torch.load_file('model.safetensors'), strict=True)")
    return {
        "format": CARD_FORMAT,
        "backbone": built.info.name,
        "torchvision_kwargs": kwargs,
        "head": {"path": built.family.head, "plain": plain, "layers": describe_head(head)},
        "num_classes": built.num_classes,
        "class_names": class_names,
        "input_size": image_size,
        "preprocessing": {
            "resize": f"shorter side to {image_size} px, then center crop {image_size}x{image_size}",
            "scale": "RGB values / 255",
            "mean": list(mean),
            "std": list(std),
        },
        "pretrained_weights": built.weights.name if built.weights else None,
        "metrics": metrics,
        "rebuild": "\n".join(rebuild),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "spec": spec,
    }


def write_card(path: Path, card: dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: _write_json(tmp, card))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_exported(card_path: Path, weights_path: Path, device: str = "cpu") -> nn.Module:
    """The published model, rebuilt from its card with torchvision alone, in eval mode."""
    card = json.loads(card_path.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_path.name} is not a model card of this service")
    kwargs = dict(card["torchvision_kwargs"])
    if "input_size" in kwargs:
        kwargs["input_size"] = tuple(kwargs["input_size"])
    model = torchvision.models.get_model(card["backbone"], **kwargs)
    if not card["head"]["plain"]:
        set_submodule(model, card["head"]["path"], build_head_from_description(card["head"]["layers"]))
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    rebuilt: nn.Module = model.to(device).eval()
    return rebuilt
