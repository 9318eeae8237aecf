"""Published weights in the formats that inference servers take: ONNX and TorchScript, each checked first.

``export_run(run_dir, request, images)`` rebuilds the published model from ``model.json`` and
``model.safetensors`` (torchvision alone, ``training.export.load_exported``), writes ``model.onnx`` or
``model.torchscript.pt`` beside them, and checks it before it is published: the exported model (through
onnxruntime, or the TorchScript module) and the PyTorch model run the same validation images in fp32,
and the largest absolute difference of their logits must be at most ``PARITY_TOLERANCE``. The card
then lists the export (input name and shape, normalization, opset, the measured difference). An export
that fails the check is an ``ExportError`` that says the difference, and no file is left behind.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnxruntime
import torch
from torch import nn

from training import artifacts
from training.checkpoint import write_atomic
from training.errors import TrainingError
from training.export import load_exported, write_card

ExportFormatName = Literal["onnx", "torchscript"]
PARITY_IMAGES = 32  # validation images run through both models
PARITY_TOLERANCE = 1e-4  # max |logit difference| in fp32
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 18, 23  # the range torch.onnx's exporter writes (18 is its floor)


@dataclass(frozen=True)
class ExportFormat:
    name: ExportFormatName
    file_name: str
    has_opset: bool


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "model.onnx", has_opset=True),
    "torchscript": ExportFormat("torchscript", "model.torchscript.pt", has_opset=False),
}


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ExportError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}") from None


@dataclass(frozen=True)
class ExportRequest:
    format: ExportFormatName
    dynamic_batch: bool = True  # ONNX: any batch size (a fixed batch otherwise); TorchScript traces are any-batch
    opset: int = DEFAULT_OPSET

    def check(self) -> None:
        get_format(self.format)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}; got {self.opset}")


class ExportError(TrainingError):
    code = "export_failed"


class ParityError(ExportError):
    code = "export_parity_failed"

    def __init__(self, export_format: str, max_abs_diff: float, images: int = PARITY_IMAGES) -> None:
        super().__init__(
            f"the {export_format} export differs from the PyTorch model: max |logit difference| {max_abs_diff:.3g} "
            f"on {images} validation images, above the tolerance {PARITY_TOLERANCE:g} (fp32)"
        )
        self.max_abs_diff = max_abs_diff


def normalized(images: torch.Tensor, card: dict[str, Any]) -> torch.Tensor:
    """uint8 (N, 3, S, S) images as the model takes them: RGB / 255, normalized by the card's mean and std."""
    pre = card["preprocessing"]
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return ((images.float() / 255.0) - mean) / std


def export_run(run_dir: Path, request: ExportRequest, images: torch.Tensor) -> dict[str, Any]:
    """Export the published model of ``run_dir``, check it on ``images`` (uint8 validation images), and record
    it in the card. Returns the card's entry for the export."""
    request.check()
    export_format = get_format(request.format)
    card_path, weights_path = run_dir / artifacts.CARD, run_dir / artifacts.WEIGHTS
    if not card_path.is_file() or not weights_path.is_file():
        raise ExportError(f"{run_dir} has no published weights (model.json, model.safetensors): the run did not finish")
    card = json.loads(card_path.read_text())
    model = load_exported(card_path, weights_path).float()
    inputs = normalized(images, card)
    path = run_dir / export_format.file_name
    started = time.monotonic()
    try:
        if export_format.name == "onnx":
            _export_onnx(model, inputs, path, request)
            exported = _onnx_logits(path, inputs)
        else:
            _export_torchscript(model, inputs, path)
            exported = _torchscript_logits(path, inputs)
        with torch.inference_mode():
            reference = model(inputs)
        max_abs_diff = float((exported - reference).abs().max())
        if not max_abs_diff <= PARITY_TOLERANCE:  # NaN fails too
            raise ParityError(export_format.name, max_abs_diff, len(inputs))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    entry = _card_entry(card, request, export_format, max_abs_diff, len(inputs), time.monotonic() - started)
    exports = [e for e in card.get("exports", []) if e["format"] != request.format]
    card["exports"] = [*exports, entry]
    write_card(card_path, card)
    return entry


def _card_entry(
    card: dict[str, Any], request: ExportRequest, export_format: ExportFormat, diff: float, count: int, seconds: float
) -> dict[str, Any]:
    size = card["input_size"]
    dynamic = request.dynamic_batch or export_format.name == "torchscript"
    return {
        "format": export_format.name,
        "file": export_format.file_name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch" if dynamic else count, 3, size, size],
        "input_dtype": "float32",
        "dynamic_batch": dynamic,
        "opset": request.opset if export_format.has_opset else None,
        "normalization": {
            "scale": "RGB values / 255",
            "mean": card["preprocessing"]["mean"],
            "std": card["preprocessing"]["std"],
        },
        "parity": {"images": count, "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "precision": "fp32"},
        "seconds": round(seconds, 2),
        "torch": torch.__version__,
    }


def _export_onnx(model: nn.Module, inputs: torch.Tensor, path: Path, request: ExportRequest) -> None:
    example = inputs[:2] if request.dynamic_batch else inputs
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if request.dynamic_batch else None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress chatter
            program = torch.onnx.export(
                model,
                (example,),
                dynamic_shapes=dynamic_shapes,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=request.opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(tmp))

    try:
        write_atomic(path, write)
    except ExportError:
        raise
    except Exception as error:  # the exporter's own errors: an operator without ONNX support, say
        first = (str(error).splitlines() or [type(error).__name__])[0][:300]
        raise ExportError(f"ONNX export failed: {type(error).__name__}: {first}") from error


def _onnx_logits(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
    return torch.from_numpy(logits)


def _export_torchscript(model: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            traced = torch.jit.trace(model, inputs[:2], check_trace=False)
        write_atomic(path, lambda tmp: torch.jit.save(traced, str(tmp)))
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:300]
        raise ExportError(f"TorchScript export failed: {type(error).__name__}: {first}") from error


def _torchscript_logits(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        logits: torch.Tensor = module(inputs)
    return logits


def run_exported_onnx(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of an exported ONNX model for float32 normalized ``inputs`` (onnxruntime, CPU)."""
    return _onnx_logits(path, inputs)


def card_of(run_dir: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((run_dir / artifacts.CARD).read_text())
    return card


__all__ = ["FORMATS", "ExportError", "ExportRequest", "ParityError", "export_run"]
