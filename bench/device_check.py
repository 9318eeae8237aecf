"""The CUDA paths on a GPU machine, in one run: ResNet-50's step rate at 224 px in bf16 with channels_last
(images/s against NVIDIA's published A100 figure), precision (bf16 autocast, fp16 with a grad scaler),
channels_last, an exact resume, throughput against the seed article's loop, a job run by a real
worker of the embedded service on the GPU, one job on several GPUs (DDP over NCCL, one rank per GPU), the
device slots' CUDA_VISIBLE_DEVICES (a pool child that imported the engine still sees only its claimed GPU),
and the GPU-trained weights exported to ONNX and TorchScript with their parity check.
Prints a JSON report (and writes it to --report).

    python bench/device_check.py --archive .devdata/cifar10-jpg.tar.gz --report out.json
    python bench/device_check.py --archive ... --dry-run   # on a CPU: every check's CPU side, in minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_vs_seed import engine_loop, extract_subset, seed_loop
from training.callbacks import Callbacks
from training.engine import Trainer
from training.runtime import resolve_runtime
from training.spec import Spec

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


def spec(root: Path, **training: Any) -> Spec:
    return Spec.model_validate(
        {
            "backbone": {"name": "resnet18"},
            "data": {"path": str(root), "image_size": 32, "batch_size": 256},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
            "regularization": {"label_smoothing": 0.1},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "training": {"epochs": 3, "seed": 0, **training},
        }
    )


def precision_paths(root: Path, work: Path) -> dict[str, Any]:
    found = {}
    on_cuda = torch.cuda.is_available()
    for precision in ("auto", "bf16", "fp16", "fp32") if on_cuda else ("auto", "fp32"):  # fp16 needs CUDA
        run_spec = spec(root, precision=precision, epochs=3 if precision == "auto" else 2)
        runtime = resolve_runtime(run_spec)
        result = Trainer(run_spec, work / f"precision-{precision}").fit()
        found[precision] = {
            "device": str(runtime.device),
            "precision": runtime.precision,
            "channels_last": runtime.channels_last,
            "grad_scaler": runtime.grad_scaler,
            "train_loss": [round(h["train_loss"], 4) for h in result.history],
            "images_per_second": [round(h["images_per_second"]) for h in result.history],
            "val_acc": round(result.history[-1]["val_acc"], 4),
            "finite": all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history),
        }
    return found


def exact_resume(root: Path, work: Path) -> dict[str, Any]:
    """Two epochs straight against one, a crash, a resume, one more: deterministic on the GPU too?"""

    class Crash(Callbacks):
        def on_epoch(self, metrics: dict[str, Any]) -> None:
            if metrics["epoch"] == 1:
                raise KeyboardInterrupt

    run_spec = spec(root, epochs=2, deterministic=True)
    Trainer(run_spec, work / "straight").fit()
    with contextlib.suppress(KeyboardInterrupt):
        Trainer(run_spec, work / "resumed", callbacks=Crash()).fit()
    Trainer(run_spec, work / "resumed").fit(resume_from=work / "resumed" / "checkpoints" / "epoch-001.pt")
    a = load_file(str(work / "straight" / "model.safetensors"))
    b = load_file(str(work / "resumed" / "model.safetensors"))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"identical": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": diff}


def throughput(archive: Path, work: Path) -> dict[str, Any]:
    """The whole CIFAR-10 train split: the article's loop (ImageFolder + DataLoader, no workers) and the engine."""
    root = extract_subset(archive, work / "cifar-full", 5000)
    seed = seed_loop(root, "resnet18", 256, epochs=1)
    engine = engine_loop(root, "resnet18", 256, 2, work / "engine", "auto")
    engine_fp32 = engine_loop(root, "resnet18", 256, 1, work / "engine-fp32", "fp32")
    return {
        "train_images": 50000,
        "batch_size": 256,
        "seed_images_per_second": [round(r) for r in seed],
        "engine_images_per_second": [round(r) for r in engine],
        "engine_fp32_images_per_second": [round(r) for r in engine_fp32],
        "ratio": round(max(engine) / max(seed), 2),
    }


def service_worker(archive: Path, work: Path) -> dict[str, Any]:
    """The embedded service (`finetune serve`) with one worker; a job trains on the GPU."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FT_HOME": str(work / "service")}
    log = (work / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and serve.poll() is None, "the service did not start"
            time.sleep(0.5)
        subset = extract_subset(archive, work / "cifar-small", 200)
        packed = Path(shutil.make_archive(str(subset), "zip", subset))
        with httpx.Client(base_url=url, timeout=60) as client, packed.open("rb") as file:
            ds = client.post("/v1/datasets", files={"file": ("cifar.zip", file)}).json()["id"]
            while client.get(f"/v1/datasets/{ds}").json()["status"] == "validating":
                time.sleep(0.3)
            body = {"spec": {"data": {"dataset": ds, "image_size": 32, "batch_size": 128}, "training": {"epochs": 3}}}
            started = time.monotonic()
            job_id = client.post("/v1/jobs", json=body).json()["id"]
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                time.sleep(0.5)
            events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        started_note = next((e["message"] for e in events if e["type"] == "info"), None)
        return {
            "status": job["status"],
            "error": job.get("error"),
            "seconds": round(time.monotonic() - started, 1),
            "started": started_note,
            "val_acc": (job["metrics"].get("final") or {}).get("val_acc"),
        }
    finally:
        serve.send_signal(2)
        serve.wait(60)


def distributed(root: Path, work: Path) -> dict[str, Any]:
    """DDP on NCCL (training.devices: 2 and "all", each rank on its own GPU through a per-rank
    CUDA_VISIBLE_DEVICES), with and without SyncBatchNorm, against one process: throughput and accuracy."""
    from training.distributed import fit_on_devices, resolve_devices

    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"skipped": f"{gpus} GPU: DDP on NCCL needs two or more (NCCL refuses two ranks on one GPU)"}
    found: dict[str, Any] = {"gpus": gpus}
    runs = [("1", 1, False), ("2", 2, False), ("2-syncbn", 2, True), ("all", "all", False)]
    for name, devices, sync in runs:
        run_spec = spec(root, epochs=2, devices=devices, sync_batchnorm=sync)
        started = time.monotonic()
        result = fit_on_devices(run_spec, work / f"ddp-{name}", callbacks=Callbacks())
        found[name] = {
            "processes": resolve_devices(devices),
            "images_per_second": [round(h["images_per_second"]) for h in result.history],
            "val_acc": round(result.history[-1]["val_acc"], 4),
            "seconds": round(time.monotonic() - started, 1),
            "ranks_seen": sorted(p.name for p in (work / f"ddp-{name}" / "ranks").glob("*.pid")) if name != "1" else [],
        }
    return found


def slot_visibility() -> dict[str, Any]:
    """What ``worker.tasks.device_slots_for`` relies on: a pool child has imported torch and the engine (its
    warm-up) before its job claims GPUs and sets ``CUDA_VISIBLE_DEVICES``; CUDA must not have started by then,
    or the job would see every GPU. A fresh process per GPU id, as a pool child is."""
    gpus = torch.cuda.device_count()
    probe = (
        "import os, sys, worker.runner, training.distributed\n"
        "os.environ['CUDA_VISIBLE_DEVICES'] = sys.argv[1]\n"
        "import torch\n"
        "print(torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')\n"
    )
    found: dict[str, Any] = {"gpus": gpus}
    for gpu in [str(i) for i in range(gpus)] or ["-1"]:
        done = subprocess.run([sys.executable, "-c", probe, gpu], cwd=REPO, capture_output=True, text=True)
        found[gpu] = done.stdout.strip() or done.stderr[-500:]
    found["ok"] = all(str(found[g]).startswith("1 ") for g in map(str, range(gpus))) if gpus else "no GPU"
    return found


def exports(root: Path, work: Path, epochs: int = 2) -> dict[str, Any]:
    """A run trained on this device (bf16 autocast on a GPU), its weights exported to ONNX and TorchScript: the
    parity check (fp32, the PyTorch model against onnxruntime / the TorchScript module on 32 validation images)
    on weights that came from the GPU."""
    from training.exports import ExportRequest, export_run

    run_dir = work / "export-run"
    run_spec = spec(root, epochs=epochs)
    Trainer(run_spec, run_dir).fit()
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    found: dict[str, Any] = {"trained_on": str(resolve_runtime(run_spec).device)}
    for name in ("onnx", "torchscript"):
        entry = export_run(run_dir, ExportRequest(format=name), images)  # type: ignore[arg-type]
        found[name] = {key: entry[key] for key in entry if key in ("max_abs_diff", "parity", "opset", "input_shape")}
    return found


NVIDIA_A100_RESNET50_AMP = 2470  # images/s, one A100, mixed precision: NVIDIA's published training figure


def resnet50_step_rate(batch_size: int = 256, steps: int = 30, warmup: int = 10) -> dict[str, Any]:
    """The step's ceiling, apart from any data loading: ResNet-50 at 224 px, bf16 autocast, channels_last,
    SGD with momentum, on random tensors already on the GPU; eager, then torch.compile (its compile time
    apart). Images/s against NVIDIA's published A100 figure."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    torch.backends.cudnn.benchmark = True
    found: dict[str, Any] = {"batch_size": batch_size, "image_size": 224, "precision": "bf16", "channels_last": True}
    for mode in ("eager", "compiled"):
        found[mode] = _resnet50_rate(batch_size, steps, warmup, compiled=mode == "compiled")
        torch.cuda.empty_cache()
    found["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return found


def _resnet50_rate(batch_size: int, steps: int, warmup: int, *, compiled: bool) -> dict[str, Any]:
    import torchvision

    images = torch.randn(batch_size, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch_size,), device="cuda")
    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    began = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warm_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = steps * batch_size / (time.perf_counter() - began)
    return {
        "images_per_second": round(rate),
        "vs_nvidia_a100_amp": round(rate / NVIDIA_A100_RESNET50_AMP, 2),
        "warmup_seconds": round(warm_seconds, 1),
    }


def attempt(report: dict[str, Any], name: str, check: Callable[[], Any]) -> None:
    started = time.monotonic()
    try:
        report[name] = check()
    except Exception:
        report[name] = {"error": traceback.format_exc()[-2000:]}
    report[name + "_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps({name: report[name]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--skip", default="", help="comma-separated checks to skip")
    parser.add_argument("--per-class", type=int, default=500, help="train images per class of the small checks")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the CPU side only: a tiny subset, the GPU checks report themselves skipped, the slot probe and the "
        "exports run on the CPU (the heavy checks are left out)",
    )
    args = parser.parse_args()
    if args.dry_run:
        args.per_class = min(args.per_class, 8)
        args.skip = ",".join([args.skip, "precision", "service_worker", "throughput", "resume"])
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = extract_subset(args.archive, work / "cifar", args.per_class)
        checks = {
            "resnet50_step_rate": resnet50_step_rate,
            "precision": lambda: precision_paths(root, work),
            "service_worker": lambda: service_worker(args.archive, work),
            "throughput": lambda: throughput(args.archive, work),
            "resume": lambda: exact_resume(root, work),
            "distributed": lambda: distributed(root, work),
            "slot_visibility": slot_visibility,
            "exports": lambda: exports(root, work),
        }
        for name, check in checks.items():
            if name not in skip:
                attempt(report, name, check)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)


if __name__ == "__main__":
    main()
