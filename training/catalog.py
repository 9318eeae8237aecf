"""The backbone catalog: what every torchvision classifier is, without importing torch.

The catalog is generated from torchvision by ``python -m training.catalog`` into ``catalog.json``
beside this file, and a test keeps it in sync. The spec validates against it, and the API lists
it, in processes that never import torch (torch takes seconds to import).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from training.errors import WeightsUnavailable

CATALOG_PATH = Path(__file__).with_name("catalog.json")


@dataclass(frozen=True)
class WeightsInfo:
    """One pretrained checkpoint that torchvision publishes for a backbone."""

    name: str  # the enum member, e.g. "IMAGENET1K_V2"
    url: str
    num_params: int
    image_size: int  # the crop size its eval transform uses
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet_acc1: float | None

    @property
    def file_name(self) -> str:
        """The file name torchvision's hub cache keeps these weights under."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BackboneInfo:
    """A torchvision classification model, as the service describes it."""

    name: str
    family: str
    num_params: int  # with torchvision's 1000-class head
    native_size: int  # the input size its default weights were evaluated at
    min_size: int  # the smallest square input it accepts (from scratch)
    size_multiple: int  # input sizes must be a multiple of this (ViT patch size, MaxViT grid)
    num_stages: int  # stages of the backbone, from the stem to the last block (freezing, layer decay)
    default_weights: str
    weights: tuple[WeightsInfo, ...]
    dropout_kwarg: str | None  # builder argument that sets the rate of its own dropout layers
    stochastic_depth_kwarg: str | None  # builder argument for stochastic depth, where it has one

    def find_weights(self, name: str) -> WeightsInfo | None:
        """The weights called ``name`` ("DEFAULT" means torchvision's default), or None."""
        wanted = self.default_weights if name == "DEFAULT" else name
        return next((w for w in self.weights if w.name == wanted), None)

    def weights_names(self) -> list[str]:
        return ["DEFAULT", *(w.name for w in self.weights)]


def _weights_from_json(raw: dict[str, object]) -> WeightsInfo:
    data = dict(raw)
    data["mean"] = tuple(data["mean"])  # type: ignore[arg-type]
    data["std"] = tuple(data["std"])  # type: ignore[arg-type]
    return WeightsInfo(**data)  # type: ignore[arg-type]


@cache
def load_catalog() -> dict[str, BackboneInfo]:
    """Every backbone by name, read from ``catalog.json``."""
    raw = json.loads(CATALOG_PATH.read_text())
    catalog: dict[str, BackboneInfo] = {}
    for entry in raw["backbones"]:
        entry = dict(entry)
        entry["weights"] = tuple(_weights_from_json(w) for w in entry["weights"])
        catalog[entry["name"]] = BackboneInfo(**entry)
    return catalog


def backbone_names() -> list[str]:
    return sorted(load_catalog())


def closest_names(name: str, n: int = 3) -> list[str]:
    """The valid backbone names nearest to a misspelt one."""
    names = backbone_names()
    close = difflib.get_close_matches(name.lower(), names, n=n, cutoff=0.5)
    if not close:
        close = [candidate for candidate in names if candidate.startswith(name.lower()[:3])][:n]
    return close


def get_backbone(name: str) -> BackboneInfo:
    """The catalog entry for ``name``; a KeyError naming the closest valid names otherwise."""
    try:
        return load_catalog()[name]
    except KeyError:
        close = closest_names(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown backbone {name!r}{hint}") from None


def torch_hub_dir() -> Path:
    """torch.hub.get_dir(), computed the same way without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        cache_home = os.environ.get("XDG_CACHE_HOME", str(Path("~/.cache").expanduser()))
        torch_home = str(Path(cache_home) / "torch")
    return Path(torch_home).expanduser() / "hub"


def weights_cache_path(weights: WeightsInfo) -> Path:
    """Where torchvision looks for (and downloads) these weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return torch_hub_dir() / "checkpoints" / weights.file_name


def check_weights_available(weights: WeightsInfo, allow_downloads: bool | None) -> Path:
    """The weights' file in torchvision's cache, checked to be there or downloadable: ``WeightsUnavailable``,
    naming the file, when it is missing and downloads are off (``allow_downloads`` None lets torchvision
    download, as it does by default). The service checks a spec with this; the engine, before it builds."""
    path = weights_cache_path(weights)
    if not path.is_file() and allow_downloads is False:
        raise WeightsUnavailable(
            f"pretrained weights {weights.name} are not in the local cache (expected {path}) and weight downloads "
            "are off: put the file there, or allow downloads with FT_ALLOW_WEIGHT_DOWNLOADS=1"
        )
    return path


def describe(info: BackboneInfo) -> dict[str, object]:
    """What the API and ``python -m training backbones`` show of a backbone, cache state included."""
    return {
        "name": info.name,
        "family": info.family,
        "num_params": info.num_params,
        "native_size": info.native_size,
        "min_size": info.min_size,
        "size_multiple": info.size_multiple,
        "num_stages": info.num_stages,
        "default_weights": info.default_weights,
        "supports_dropout": info.dropout_kwarg is not None,
        "supports_stochastic_depth": info.stochastic_depth_kwarg is not None,
        "weights": [
            {
                "name": w.name,
                "file_name": w.file_name,
                "num_params": w.num_params,
                "image_size": w.image_size,
                "imagenet_acc1": w.imagenet_acc1,
                "cached": weights_cache_path(w).is_file(),
            }
            for w in info.weights
        ],
    }


if __name__ == "__main__":
    from training.backbones import build_catalog  # torch: this module stays torch-free when imported

    CATALOG_PATH.write_text(json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG_PATH}")
