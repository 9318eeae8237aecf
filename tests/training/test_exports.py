"""ONNX and TorchScript exports of published weights: one backbone of each family, parity against PyTorch.

A published run folder is made the way ``Trainer._finish`` makes it (weights and card from
``training.export``), from a seeded model with a few steps of training, so that the logits are not
those of an untouched head; the validation images are real CIFAR-10 images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cifar import make_cifar_subset
from training.backbones import build_model
from training.export import export_state_dict, model_card, save_weights, write_card
from training.exports import PARITY_TOLERANCE, ExportError, ExportRequest, ParityError, export_run, run_exported_onnx
from training.spec import BackboneSpec

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CLASSES = [f"c{i}" for i in range(10)]

# One of each family, at a small input: (backbone, image size).
FAMILIES = [
    ("resnet18", 32),
    ("mobilenet_v3_small", 32),
    ("efficientnet_b0", 32),
    ("convnext_tiny", 32),
    ("vit_b_32", 32),
]


@pytest.fixture(scope="module")
def cifar_images(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """32 real CIFAR-10 test images, uint8 (32, 3, 32, 32)."""
    root = make_cifar_subset(tmp_path_factory.mktemp("cifar"), per_class=4, splits=("test",))
    paths = sorted((root / "test").rglob("*.jpg"))[:32]
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths]))


def published_run(run_dir: Path, backbone: str, image_size: int, images: torch.Tensor) -> Path:
    """A run folder with model.safetensors and model.json of ``backbone``, after one SGD step on ``images`` (a
    fresh ViT head is zeros: its logits would all be 0)."""
    torch.manual_seed(0)
    built = build_model(BackboneSpec(name=backbone), len(CLASSES), image_size)
    model = built.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    labels = torch.arange(len(images)) % len(CLASSES)
    x = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model.train()
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", export_state_dict(model), {"backbone": backbone})
    card = model_card(
        built, class_names=CLASSES, image_size=image_size, mean=MEAN, std=STD, metrics={}, spec={"backbone": backbone}
    )
    write_card(run_dir / "model.json", card)
    return run_dir


@pytest.mark.parametrize(("backbone", "image_size"), FAMILIES, ids=[name for name, _ in FAMILIES])
def test_onnx_export_of_each_family_matches_pytorch_and_takes_any_batch(
    backbone: str, image_size: int, cifar_images: torch.Tensor, tmp_path: Path
) -> None:
    run_dir = published_run(tmp_path / backbone, backbone, image_size, cifar_images)

    entry = export_run(run_dir, ExportRequest("onnx", dynamic_batch=True, opset=18), cifar_images)

    assert (run_dir / "model.onnx").is_file()
    assert entry["parity"]["images"] == 32
    assert entry["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    print(f"{backbone}: onnx parity max |diff| {entry['parity']['max_abs_diff']:.2e}")
    card = json.loads((run_dir / "model.json").read_text())
    assert card["exports"] == [entry]
    assert entry["input_name"] == "input" and entry["input_shape"] == ["batch", 3, image_size, image_size]
    assert entry["opset"] == 18 and entry["normalization"]["mean"] == list(MEAN)
    # A batch of another size (5) through the dynamic-batch model, against the PyTorch model.
    from training.export import load_exported
    from training.exports import normalized

    model = load_exported(run_dir / "model.json", run_dir / "model.safetensors")
    x = normalized(cifar_images[3:8], card)
    with torch.inference_mode():
        reference = model(x)
    logits = run_exported_onnx(run_dir / "model.onnx", x)
    assert logits.shape == (5, len(CLASSES))
    assert float((logits - reference).abs().max()) <= PARITY_TOLERANCE


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_torchscript_export_matches_pytorch(backbone: str, cifar_images: torch.Tensor, tmp_path: Path) -> None:
    run_dir = published_run(tmp_path / backbone, backbone, 32, cifar_images)

    entry = export_run(run_dir, ExportRequest("torchscript"), cifar_images)

    module = torch.jit.load(str(run_dir / "model.torchscript.pt"))
    card = json.loads((run_dir / "model.json").read_text())
    x = torch.from_numpy(np.ascontiguousarray(cifar_images[:7].numpy())).float()
    from training.exports import normalized

    with torch.inference_mode():
        assert module(normalized(x, card)).shape == (7, len(CLASSES))
    assert entry["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert entry["opset"] is None and [e["format"] for e in card["exports"]] == ["torchscript"]


def test_a_static_batch_onnx_export_says_its_batch(cifar_images: torch.Tensor, tmp_path: Path) -> None:
    run_dir = published_run(tmp_path / "run", "resnet18", 32, cifar_images)
    entry = export_run(run_dir, ExportRequest("onnx", dynamic_batch=False, opset=18), cifar_images)
    assert entry["input_shape"] == [32, 3, 32, 32] and entry["dynamic_batch"] is False


def test_an_export_that_fails_parity_is_an_error_with_the_difference_and_no_file(
    cifar_images: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares what the exported file computes: an exporter that writes a slightly different model
    (here, weights perturbed by 1e-3 between the export and the check) is caught, with its difference."""
    run_dir = published_run(tmp_path / "run", "resnet18", 32, cifar_images)
    import training.exports as exports

    original = exports._torchscript_logits

    def perturbed(path: Path, inputs: torch.Tensor) -> torch.Tensor:
        return original(path, inputs) + 1e-3

    monkeypatch.setattr(exports, "_torchscript_logits", perturbed)
    with pytest.raises(ParityError, match=r"max \|logit difference\| 0\.001 .*above the tolerance 0\.0001") as error:
        export_run(run_dir, ExportRequest("torchscript"), cifar_images)
    assert error.value.code == "export_parity_failed"
    assert error.value.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert not (run_dir / "model.torchscript.pt").exists()
    assert "exports" not in json.loads((run_dir / "model.json").read_text())


def test_bad_requests_are_clear_errors(cifar_images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset must be between 18 and 23; got 9"):
        export_run(tmp_path, ExportRequest("onnx", opset=9), cifar_images)
    with pytest.raises(ExportError, match="has no published weights"):
        export_run(tmp_path, ExportRequest("onnx"), cifar_images)


def test_the_engine_cli_exports_a_finished_run(colour_set: Path, tmp_path: Path) -> None:
    """``python -m training run`` then ``python -m training export RUN_DIR --format onnx``."""
    from tests.training.conftest import tiny_spec

    spec = tiny_spec(colour_set, training={"epochs": 1, "max_steps": 2}, optimizer={"lr": 0.001})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    run_dir = tmp_path / "run"
    python = sys.executable
    subprocess.run([python, "-m", "training", "run", str(spec_file), "--out", str(run_dir)], check=True)

    done = subprocess.run(
        [python, "-m", "training", "export", str(run_dir), "--format", "onnx"], capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert "max |logit difference|" in done.stderr
    card = json.loads((run_dir / "model.json").read_text())
    (entry,) = card["exports"]
    assert entry["parity"]["images"] == 18  # the colour set's validation split: a quarter of 72
    assert (run_dir / "model.onnx").is_file()
    bad = subprocess.run(
        [python, "-m", "training", "export", str(tmp_path), "--format", "onnx"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no model.json" in bad.stderr
