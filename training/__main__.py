"""``python -m training``: run a spec locally, list the backbones, print the spec's JSON schema.

Exit codes: 0 success, 1 the run failed (the message says why), 2 a bad spec or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from training.catalog import backbone_names, describe, get_backbone
from training.errors import TrainingError
from training.progress import ConsoleProgress
from training.settings import engine_settings
from training.spec import Spec, format_validation_error, load_spec, spec_json_schema

console = Console(stderr=True, soft_wrap=True)  # whole lines: scripts grep them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="fine-tune a backbone as a spec file says")
    run.add_argument("spec", type=Path, help="a YAML or JSON spec")
    run.add_argument("--out", type=Path, required=True, help="the run folder (weights, card, checkpoints)")
    run.add_argument("--resume", type=Path, help="a checkpoint of this run to continue from")
    run.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    run.add_argument("--devices", help="processes (one per device), overriding training.devices: N or all")
    export = commands.add_parser("export", help="export a finished run's weights to ONNX or TorchScript, checked")
    export.add_argument("run_dir", type=Path, help="a run folder with model.json and model.safetensors")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    export.add_argument("--static-batch", action="store_true", help="ONNX: a fixed batch of 32, not any batch")
    export.add_argument("--data", type=Path, help="the run's data set, where the spec does not name it by path")
    listing = commands.add_parser("backbones", help="list the backbones, their sizes and cached weights")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("schema", help="print the spec's JSON schema")
    args = parser.parse_args(argv)
    if args.command == "backbones":
        return list_backbones(as_json=args.json)
    if args.command == "schema":
        print(json.dumps(spec_json_schema(), indent=2))
        return 0
    if args.command == "export":
        return export_run_dir(args.run_dir, args.format, opset=args.opset, static=args.static_batch, data=args.data)
    return run_spec(args.spec, args.out, resume=args.resume, max_steps=args.max_steps, devices=args.devices)


def read_spec(path: Path, max_steps: int | None, devices: str | None = None) -> Spec | None:
    try:
        spec = load_spec(path)
        overrides: dict[str, Any] = {}
        if max_steps is not None:
            overrides["max_steps"] = max_steps
        if devices is not None:
            overrides["devices"] = devices if devices == "all" else int(devices) if devices.isdigit() else devices
        if overrides:
            spec = Spec.model_validate(
                {
                    **spec.model_dump(mode="json"),
                    "training": {**spec.training.model_dump(mode="json"), **overrides},
                }
            )
    except FileNotFoundError:
        console.print(f"[red]error:[/] spec file {path} does not exist")
        return None
    except ValidationError as error:
        console.print(f"[red]error:[/] {path} is not a valid spec:")
        for line in format_validation_error(error):
            console.print(f"  {line}", highlight=False)
        return None
    except (ValueError, yaml.YAMLError) as error:  # a top level that is not a mapping; YAML syntax
        console.print(f"[red]error:[/] {path} is not a valid spec: {error}", highlight=False)
        return None
    return spec


def run_spec(path: Path, out: Path, *, resume: Path | None, max_steps: int | None, devices: str | None = None) -> int:
    spec = read_spec(path, max_steps, devices)
    if spec is None:
        return 2
    from training.distributed import RanksLost, fit_on_devices  # torch: imported only for a run

    with ConsoleProgress(console) as progress:
        try:
            result = fit_on_devices(spec, out, callbacks=progress, resume_from=resume)
        except TrainingError as error:
            progress.stop()
            console.print(f"[red]error ({error.code}):[/] {error}", highlight=False)
            return 1
        except RanksLost as error:
            progress.stop()
            console.print(f"[red]error (rank_lost):[/] {error}; resume from", out / "checkpoints", highlight=False)
            return 1
        except KeyboardInterrupt:
            progress.stop()
            console.print("[yellow]interrupted[/]: the last epoch's checkpoint is in", out / "checkpoints")
            return 130
    console.print(summary_table(result.history, result.final, result.test))
    console.print(f"{result.status}: weights {result.weights_path}, model card {result.card_path}")
    return 0


def export_run_dir(run_dir: Path, export_format: str, *, opset: int | None, static: bool, data: Path | None) -> int:
    """``python -m training export``: the published weights of a run as ONNX or TorchScript, parity-checked."""
    card_path = run_dir / "model.json"
    if not card_path.is_file():
        console.print(f"[red]error:[/] {run_dir} has no model.json: not a finished run folder")
        return 2
    spec = Spec.model_validate(json.loads(card_path.read_text())["spec"])
    source = data or (Path(spec.data.path) if spec.data.path else None)
    if source is None:
        console.print("[red]error:[/] the spec names its data set by id: give its folder with --data")
        return 2
    # torch: imported only for an export (listing backbones or checking a spec stays fast)
    from training.data import validation_images
    from training.exports import DEFAULT_OPSET, PARITY_IMAGES, ExportRequest, export_run

    request = ExportRequest(export_format, dynamic_batch=not static, opset=opset or DEFAULT_OPSET)  # type: ignore[arg-type]
    try:
        images = validation_images(
            spec.data,
            spec.image_size,
            source=source,
            work_dir=run_dir / "data",
            seed=spec.training.seed,
            settings=engine_settings(),
            count=PARITY_IMAGES,
        )
        entry = export_run(run_dir, request, images)
    except TrainingError as error:
        console.print(f"[red]error ({error.code}):[/] {error}", highlight=False)
        return 1
    parity = entry["parity"]
    console.print(
        f"{run_dir / entry['file']}: parity on {parity['images']} validation images, "
        f"max |logit difference| {parity['max_abs_diff']:.3g} (tolerance {parity['tolerance']:g})",
        highlight=False,
    )
    return 0


def summary_table(history: list[dict[str, Any]], final: dict[str, Any] | None, test: dict[str, Any] | None) -> Table:
    table = Table(title="epochs")
    columns = [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "grad_norm_mean",
        "epoch_seconds",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for row in history:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    if final or test:
        table.caption = "published weights: " + ", ".join(
            f"{k} {_cell(v)}" for k, v in {**(final or {}), **(test or {})}.items()
        )
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def list_backbones(*, as_json: bool) -> int:
    rows = [describe(get_backbone(name)) for name in backbone_names()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="torchvision backbones")
    for column in ("name", "params (M)", "native", "min", "stages", "weights (cached*)"):
        table.add_column(column)
    for row in rows:
        weights = ", ".join(w["name"] + ("*" if w["cached"] else "") for w in row["weights"])  # type: ignore[attr-defined]
        table.add_row(
            str(row["name"]),
            f"{row['num_params'] / 1e6:.1f}",  # type: ignore[operator]
            str(row["native_size"]),
            str(row["min_size"]),
            str(row["num_stages"]),
            weights,
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
