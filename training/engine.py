"""The fit loop: one fine-tuning run from a spec, on its own.

``Trainer(spec, out_dir).fit()`` sets up the device, data, model and optimization in small named
steps, trains and evaluates every epoch, writes an atomic checkpoint of the whole state each
epoch, and publishes ``model.safetensors``, ``model.json``, ``metrics.json`` and ``confusion.json`` (the
published weights' confusion matrix and per-class accuracy on the validation and test sets) in ``out_dir``.
It knows nothing of the service: the caller plugs in ``Callbacks``.

The hot loop does not wait on the device: losses, accuracies and gradient norms accumulate in
device tensors and the host reads them every ``log_every_steps`` steps and at epoch end.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.backbones import BuiltModel, build_model
from training.callbacks import Callbacks, CheckpointInfo, RunInfo, StepMetrics, Stop
from training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, write_atomic
from training.clipping import GradientClipper
from training.data import DataBundle, load_data
from training.distributed import Cluster, check_shards, global_batch_size
from training.divergence import DivergenceGuard
from training.errors import CheckpointError, DeviceUnavailable, NonFiniteLoss, TrainingError
from training.export import export_state_dict, model_card, save_weights, write_card
from training.freezing import FreezePlan
from training.normalization import normalize
from training.optim import apply_decoupled_weight_decay, build_optimizer, plan_param_groups
from training.regularization import EarlyStopping, Mixer, classification_loss, make_ema
from training.schedule import LRSchedule
from training.settings import EngineSettings, engine_settings
from training.spec import MonitorMetric, Spec, missing_split_problem, monitor_mode

Status = Literal["completed", "early_stopped", "max_steps", "cancelled", "preempted"]
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    grad_scaler: bool  # fp16 on CUDA

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def resolve_runtime(spec: Spec) -> Runtime:
    """The device and numerics a spec asks for, checked against what this machine has."""
    t = spec.training
    cuda = torch.cuda.is_available()
    if t.device == "cuda" and not cuda:
        raise DeviceUnavailable("training.device: cuda was asked for, and this machine has no CUDA device")
    device = torch.device("cuda" if t.device != "cpu" and cuda else "cpu")
    on_cuda = device.type == "cuda"
    if t.precision == "fp16" and not on_cuda:
        raise TrainingError("training.precision: fp16 needs a CUDA device; use bf16 or fp32", code="invalid_spec")
    dtype: torch.dtype | None = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    if t.precision == "auto":
        # oneDNN's bf16 kernels are not deterministic: a deterministic run on the CPU stays in fp32.
        native_bf16 = torch.cuda.is_bf16_supported() if on_cuda else cpu_has_native_bf16() and not t.deterministic
        dtype = torch.bfloat16 if native_bf16 else None
    family_is_conv = spec.backbone.name.split("_")[0] not in ("vit", "swin")
    channels_last = on_cuda and family_is_conv if t.channels_last == "auto" else bool(t.channels_last)
    return Runtime(device, dtype, channels_last, grad_scaler=dtype is torch.float16)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX): then bf16 autocast is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism
        # warn_only: a few CUDA kernels (adaptive pooling's backward) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        torch.set_float32_matmul_precision("high")  # TF32 on Ampere and later


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A seed for one batch's random draws (mixup), the same on any device and after a resume."""
    return (seed * 1_000_003 + epoch * 10_007 + batch) % 2**63


@dataclass
class EpochSums:
    """Training sums of the epoch in progress, host-side values (read at epoch end or on preemption)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    """The loop's position and record; with the modules' state dicts it is everything a checkpoint holds."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps since the start
    batches_done: int = 0  # micro-batches done in the unfinished epoch (a mid-epoch checkpoint)
    sums: EpochSums = field(default_factory=EpochSums)
    best: dict[str, Any] | None = None  # {"epoch", "source": "model"|"ema", "value", "checkpoint"}
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # file names on disk, oldest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        data = dict(data)
        data["sums"] = EpochSums(**data["sums"])
        return cls(**data)


@dataclass
class FitResult:
    status: Status
    epochs_completed: int
    steps: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: dict[str, Any] | None  # validation metrics of the published weights
    test: dict[str, float] | None
    weights_path: Path | None
    card_path: Path | None
    checkpoint_path: Path | None  # the last checkpoint written


class Trainer:
    """One fine-tuning run. ``data_path`` and ``init_from`` are the local files that ``spec.data`` and
    ``spec.backbone.init_from`` name, where the spec names them by id (the service resolves them)."""

    def __init__(
        self,
        spec: Spec,
        out_dir: Path,
        *,
        data_path: Path | None = None,
        init_from: Path | None = None,
        callbacks: Callbacks | None = None,
        settings: EngineSettings | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        source = data_path or (Path(spec.data.path) if spec.data.path else None)
        if source is None:
            raise TrainingError(
                "data.dataset names an uploaded data set: run it through the service", code="invalid_spec"
            )
        self.spec = spec
        self.out_dir = Path(out_dir)
        self.data_source = source
        self.init_from = init_from or (Path(spec.backbone.init_from) if spec.backbone.init_from else None)
        self.callbacks = callbacks or Callbacks()
        self.settings = settings or engine_settings()
        self.cluster = cluster or Cluster()  # a rank of a distributed run (training.distributed), or one process
        self.state = TrainState()

    # --- setup ------------------------------------------------------------------------------

    def _setup_runtime(self) -> None:
        runtime = resolve_runtime(self.spec)
        self.runtime = replace(runtime, device=self.cluster.device(runtime.device))
        configure_determinism(self.spec.training.deterministic, self.runtime.device)
        seed_everything(self.spec.training.seed)

    def _setup_data(self, normalization: Normalization | None) -> None:
        spec = self.spec
        self.data: DataBundle = load_data(
            spec.data,
            spec.image_size,
            source=self.data_source,
            work_dir=self.out_dir / "data",
            seed=spec.training.seed,
            device=self.runtime.device,
            settings=self.settings,
            normalization=normalization,
            shard=self.cluster.shard,
        )
        check_shards(self.cluster, self.data.train.num_images, spec.data.batch_size)
        self.num_classes = len(self.data.class_names)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(self.data.mean, device=self.runtime.device).view(shape)
        self.std = torch.tensor(self.data.std, device=self.runtime.device).view(shape)
        accum = spec.training.grad_accum_steps
        self.steps_per_epoch = math.ceil(len(self.data.train) / accum)
        self.total_steps = spec.training.epochs * self.steps_per_epoch
        if spec.training.max_steps is not None:
            self.total_steps = min(self.total_steps, spec.training.max_steps)
        self._check_monitors()

    def _check_monitors(self) -> None:
        splits = {name for name, count in self.data.counts.items() if count}
        # The metric that picks the best epoch: with no validation data and none named, there is none (the
        # last epoch's weights are published).
        self.monitor: MonitorMetric | None = self.spec.training.monitor or ("val_acc" if "val" in splits else None)
        for where, metric in self.spec.monitors().items():
            problem = missing_split_problem(where, metric, splits)
            if problem is not None:
                raise TrainingError(problem, code="invalid_spec")
            if metric.endswith("acc_top5") and self.num_classes <= 5:
                raise TrainingError(
                    f"{where}: {metric} needs more than five classes; this data set has {self.num_classes}",
                    code="invalid_spec",
                )
        self.test_every_epoch = any(m.startswith("test_") for m in self.spec.monitors().values())

    def _setup_model(self) -> None:
        spec = self.spec
        self.built: BuiltModel = build_model(
            spec.backbone, self.num_classes, spec.image_size, settings=self.settings, init_from=self.init_from
        )
        memory_format = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        self.model: nn.Module = self.built.model.to(self.runtime.device).to(memory_format=memory_format)
        if spec.training.sync_batchnorm and self.cluster.active:
            self.model = self.cluster.sync_batchnorm(self.model, self.runtime.device)
        self.freeze = FreezePlan(self.built, spec.backbone.freeze)
        self.train_model = self.model  # the module a training step calls: under DDP with several processes
        self.wrapped_for: frozenset[str] | None = None  # the trainable set train_model was wrapped for

    def _setup_optimization(self) -> None:
        spec = self.spec
        self.params = dict(self.model.named_parameters())
        self.group_plans = plan_param_groups(self.built, spec)
        self.optimizer = build_optimizer(self.group_plans, self.params, spec)
        self.schedule = LRSchedule(self.optimizer, spec, self.steps_per_epoch)
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.grad_scaler else None
        self.clipper = GradientClipper(spec.clipping, self.runtime.device, self.total_steps)
        reg = spec.regularization
        self.mixer = Mixer(reg.mixup) if reg.mixup is not None else None
        self.ema = make_ema(self.model, reg.ema.decay) if reg.ema is not None else None
        self.early_stopping = EarlyStopping(reg.early_stopping) if reg.early_stopping is not None else None
        classifiers = {self.built.family.head, *self.built.family.aux_heads}
        self.agc_excluded = {
            name for name in self.params if any(name.startswith(self._final_layer(path)) for path in classifiers)
        }
        device = self.runtime.device
        # The first step whose loss was not finite, found without a host sync: -1 while all is well.
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.step_counter = torch.zeros((), dtype=torch.long, device=device)
        self.last_loss = torch.zeros((), device=device)  # the last micro-batch's loss, for the guard
        divergence = spec.training.divergence
        self.guard = DivergenceGuard(divergence, self) if divergence is not None else None

    def _final_layer(self, path: str) -> str:
        """The prefix of the last layer of a classifier (the whole of a plain head)."""
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return path + "."
        if isinstance(module, nn.Sequential):
            return f"{path}.{len(module) - 1}."
        return path + "."

    def _normalization(self, checkpoint: dict[str, Any] | None) -> Normalization | None:
        """Where the input statistics come from: a resumed run's own, the pretrained weights', the
        weights ``init_from`` names (their checkpoint or the model card beside them), or else the data set's."""
        if checkpoint is not None:
            return as_normalization(checkpoint["normalization"])
        backbone = self.spec.backbone
        if backbone.weights is not None:
            from training.catalog import get_backbone

            weights = get_backbone(backbone.name).find_weights(backbone.weights)
            assert weights is not None
            return weights.mean, weights.std
        if self.init_from is not None:
            return init_from_normalization(self.init_from)
        return None

    # --- the run ----------------------------------------------------------------------------

    def fit(self, resume_from: Path | None = None) -> FitResult:
        started = time.monotonic()
        self.deadline = started + self.spec.training.max_runtime.total_seconds()
        self._setup_runtime()
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        # A stop asked for during the setup (decoding a big set takes a while) is honoured between its steps;
        # nothing has trained yet, so there is nothing new to checkpoint either way.
        for setup in (
            lambda: self._setup_data(self._normalization(checkpoint)),
            self._setup_model,
            self._setup_optimization,
        ):
            stop = self._should_stop()
            if stop is not None:
                return self._result("cancelled" if stop is Stop.CANCEL else "preempted")
            setup()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.callbacks.on_start(self._run_info())
        status = self._train()
        if status in ("cancelled", "preempted"):
            return self._result(status)
        return self._finish(status)

    def _run_info(self) -> RunInfo:
        self.freeze.apply(self.state.epoch)
        return RunInfo(
            class_names=self.data.class_names,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            epochs=self.spec.training.epochs,
            start_epoch=self.state.epoch,
            start_step=self.state.step,
            num_params=sum(p.numel() for p in self.model.parameters()),
            trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            device=str(self.runtime.device),
            precision=self.runtime.precision,
            in_memory=self.data.in_memory,
            images=self.data.counts,
            notes=self.built.notes,
        )

    def _train(self) -> Status:
        for epoch in range(self.state.epoch, self.spec.training.epochs):
            self.freeze.apply(epoch)
            outcome = self._train_epoch(epoch)
            if isinstance(outcome, Stop):
                if outcome is Stop.PREEMPT:
                    self._write_checkpoint(mid_epoch=True)
                    return "preempted"
                return "cancelled"
            stop_early = self._end_epoch(epoch)
            if outcome == "max_steps":
                return "max_steps"
            if stop_early:
                return "early_stopped"
        return "completed"

    def _train_epoch(self, epoch: int) -> Literal["done", "max_steps"] | Stop:
        t = self.spec.training
        self.freeze.set_train_mode(epoch)
        trainable = [(n, p) for n, p in self.params.items() if p.requires_grad]
        self.trainable = [p for _, p in trainable]
        self.agc_params = [p for n, p in trainable if n not in self.agc_excluded]
        self._wrap_for(frozenset(n for n, _ in trainable))
        total_batches = len(self.data.train)
        accum = t.grad_accum_steps
        sums = self.state.sums
        self.loss_sum = torch.zeros((), device=self.runtime.device)
        self.correct_sum = torch.zeros((), device=self.runtime.device)
        self.window_loss = torch.zeros((), device=self.runtime.device)
        self.window_batches = 0
        self.window_images = 0
        self.window_start = time.perf_counter()
        epoch_start = time.perf_counter()
        if self.guard is not None:
            self.guard.begin_epoch(epoch)
        self.seen_at_start = sums.seen  # this rank's images: all-reduced when the epoch's sums close
        batch_index = self.state.batches_done
        for batch_index, (images, labels) in enumerate(
            self.data.train.batches(epoch, start=self.state.batches_done), start=self.state.batches_done
        ):
            window_start = batch_index - batch_index % accum
            window_len = min(accum, total_batches - window_start)
            weight = self._shard_weight(labels.shape[0], batch_index) / window_len
            with self.cluster.no_sync(self.train_model, accumulate=batch_index + 1 < window_start + window_len):
                self._forward_backward(images, labels, epoch, batch_index, weight)
            sums.seen += labels.shape[0]
            if batch_index + 1 < window_start + window_len:
                continue  # accumulate gradients over the window
            self._optimizer_step()
            self.state.step += 1
            self.state.batches_done = batch_index + 1
            if self.guard is not None and self.guard.after_step(epoch):
                return self._train_epoch(epoch)  # rolled back: the epoch goes on from the last good state
            step_in_epoch = math.ceil(self.state.batches_done / accum)
            if self.state.step % t.log_every_steps == 0:
                self._report_step(epoch, step_in_epoch)
            stop = self._should_stop()
            if stop is not None or self._past_deadline() or (t.max_steps and self.state.step >= t.max_steps):
                self._close_epoch_sums(epoch_start)
                if stop is not None:
                    return stop
                return "max_steps"
        self._close_epoch_sums(epoch_start)
        return "done"

    def _should_stop(self) -> Stop | None:
        """The caller's stop, agreed by every rank at the same step (rank 0 alone asks the caller)."""
        return self.cluster.agree_stop(self.callbacks.should_stop(), self.runtime.device)

    def _wrap_for(self, trainable: frozenset[str]) -> None:
        """(Re)wrap the model for DDP when the trainable set changes (a gradual unfreeze): DDP reduces the
        gradients of the parameters that required them when it was built."""
        if self.cluster.active and trainable != self.wrapped_for:
            self.train_model = self.cluster.wrap(self.model, self.runtime.device)
            self.wrapped_for = trainable

    def _shard_weight(self, shard_images: int, batch_index: int) -> float:
        """This rank's share of the global batch's mean loss: DDP averages gradients over ranks, so a rank
        scales its own mean by its images x ranks / the batch's images (1 with one process; uneven shards
        of a short batch weigh what they hold)."""
        if not self.cluster.active:
            return 1.0
        total = global_batch_size(self.data.train.num_images, self.spec.data.batch_size, batch_index)
        return shard_images * self.cluster.world_size / total

    def _past_deadline(self) -> bool:
        if time.monotonic() > self.deadline:
            limit = self.spec.training.max_runtime
            raise TrainingError(f"the run exceeded training.max_runtime ({limit})", code="timeout")
        return False

    def _close_epoch_sums(self, epoch_start: float) -> None:
        """Move the device sums into the host-side state (one sync) and check the loss stayed finite."""
        sums = self.state.sums
        seen = torch.tensor(float(sums.seen - self.seen_at_start), device=self.runtime.device)
        totals = self.cluster.all_sum(torch.stack([self.loss_sum, self.correct_sum, seen]))
        loss, correct, seen_all = totals.tolist()
        self._check_finite()
        sums.loss += loss
        sums.correct += correct
        sums.seen = self.seen_at_start + int(seen_all)
        sums.seconds += time.perf_counter() - epoch_start

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch_index: int, weight: float
    ) -> None:
        reg = self.spec.regularization
        x = normalize(images, self.mean, self.std, channels_last=self.runtime.channels_last)
        targets: Any = labels
        if self.mixer is not None:
            generator = torch.Generator().manual_seed(batch_seed(self.spec.training.seed, epoch, batch_index))
            x, targets = self.mixer(x, labels, generator)
        with self._autocast():
            outputs = self.train_model(x)
        logits, aux = self.built.split_outputs(outputs)
        loss = classification_loss(logits, targets, reg.label_smoothing)
        total = loss
        for aux_weight, aux_logits in aux:
            total = total + aux_weight * classification_loss(aux_logits, targets, reg.label_smoothing)
        scaled = total * weight
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        with torch.no_grad():
            loss = loss.detach()
            self.last_loss = loss
            self.loss_sum += loss * labels.shape[0]
            self.correct_sum += (logits.detach().argmax(dim=1) == labels).sum()
            self.window_loss += loss
            self.window_batches += 1
            self.window_images += labels.shape[0]
            bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
            self.first_bad_step = torch.where(bad, self.step_counter + 1, self.first_bad_step)

    def _autocast(self) -> torch.autocast:
        dtype = self.runtime.autocast_dtype
        return torch.autocast(self.runtime.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.clipper(self.trainable, self.agc_params)
        apply_decoupled_weight_decay(self.optimizer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the head's lr this step used
        self.schedule.after_step()
        self.step_counter += 1

    def _check_finite(self) -> None:
        bad = int(self.cluster.all_max(self.first_bad_step.clone()).item())
        if bad >= 0:
            raise NonFiniteLoss(step=bad, epoch=(bad - 1) // self.steps_per_epoch + 1)

    def _report_step(self, epoch: int, step_in_epoch: int) -> None:
        # A host sync: only every log_every_steps steps. Under DDP the gradients (so their norm) are the same on
        # every rank: the losses and norms are averaged over the ranks, the images summed.
        images = torch.tensor(float(self.window_images), device=self.window_loss.device)
        window = torch.stack([self.window_loss / max(self.window_batches, 1), self.clipper.last_norm.float(), images])
        loss_sum, norm_sum, images_all = self.cluster.all_sum(window).tolist()
        loss, grad_norm = loss_sum / self.cluster.world_size, norm_sum / self.cluster.world_size
        self._check_finite()
        now = time.perf_counter()
        metrics = StepMetrics(
            epoch=epoch + 1,
            step=self.state.step,
            step_in_epoch=step_in_epoch,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            loss=loss,
            lr=self.step_lr,
            grad_norm=grad_norm,
            images_per_second=images_all / max(now - self.window_start, 1e-9),
            elapsed_seconds=now - self.window_start,
        )
        self.window_loss.zero_()
        self.window_batches = self.window_images = 0
        self.window_start = now
        self.callbacks.on_step(metrics)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, source: Any) -> dict[str, float]:
        """Loss (plain cross entropy), accuracy and top-5 accuracy (more than five classes) on a split."""
        return self._evaluate(model, source, confusion=False)[0]

    @torch.inference_mode()
    def evaluate_with_confusion(self, model: nn.Module, source: Any) -> tuple[dict[str, float], list[list[int]]]:
        """``evaluate``'s metrics and the confusion matrix: rows are true classes, columns predicted ones."""
        metrics, matrix = self._evaluate(model, source, confusion=True)
        assert matrix is not None
        return metrics, matrix

    def _evaluate(
        self, model: nn.Module, source: Any, *, confusion: bool
    ) -> tuple[dict[str, float], list[list[int]] | None]:
        model.eval()
        self.cluster.sync_buffers(model)  # rank 0's batch norm statistics on every rank
        device = self.runtime.device
        classes = self.num_classes
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
            x = normalize(images, self.mean, self.std, channels_last=self.runtime.channels_last)
            with self._autocast():
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
        # Under DDP each rank evaluated its shard of every batch: the sums are over the ranks.
        totals = torch.stack([loss_sum.double(), correct.double(), correct5.double(), torch.tensor(seen).to(loss_sum)])
        loss, hits, hits5, seen_all = self.cluster.all_sum(totals).tolist()
        seen = int(seen_all)
        seen = max(seen, 1)
        metrics = {"loss": loss / seen, "acc": hits / seen}
        if top5:
            metrics["acc_top5"] = hits5 / seen
        matrix = self.cluster.all_sum(counts).view(classes, classes).tolist() if counts is not None else None
        return metrics, matrix

    def _end_epoch(self, epoch: int) -> bool:
        """Evaluate, record, checkpoint and report an epoch. True when early stopping says stop."""
        eval_start = time.perf_counter()
        state = self.state
        sums = state.sums
        val = self.evaluate(self.model, self.data.val) if self.data.val is not None else {}
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": sums.loss / max(sums.seen, 1),
            "train_acc": sums.correct / max(sums.seen, 1),
            **{f"val_{k}": v for k, v in val.items()},
            "lr": self.step_lr,  # of the epoch's last step
            **self.clipper.epoch_metrics(),
            "trainable_params": sum(p.numel() for p in self.trainable),
            "images_per_second": sums.seen / max(sums.seconds, 1e-9),
        }
        if self.test_every_epoch and self.data.test is not None:  # asked for: a test_ metric picks the best
            metrics.update({f"test_{k}": v for k, v in self.evaluate(self.model, self.data.test).items()})
        if self.ema is not None and self.data.val is not None:
            ema = self.evaluate(self.ema.module, self.data.val)
            metrics.update({f"ema_val_{k}": v for k, v in ema.items()})
        metrics["epoch_seconds"] = sums.seconds + (time.perf_counter() - eval_start)
        is_best = self._update_best(metrics)
        self.schedule.after_epoch(metrics)
        stop_early = self.early_stopping.update(metrics) if self.early_stopping is not None else False
        state.epoch = epoch + 1
        state.batches_done = 0
        state.sums = EpochSums()
        state.history.append(metrics)
        self.clipper.reset_epoch()
        self._write_checkpoint(mid_epoch=False, is_best=is_best, metrics=metrics)
        self.callbacks.on_epoch(metrics)
        return stop_early

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        """Track the best epoch by ``training.monitor``, the EMA weights competing with the model's."""
        monitor = self.monitor
        if monitor is None:
            return False
        better = (lambda a, b: a < b) if monitor_mode(monitor) == "min" else (lambda a, b: a > b)
        candidates = [("model", metrics[monitor])]
        if self.ema is not None and f"ema_{monitor}" in metrics:
            candidates.append(("ema", metrics[f"ema_{monitor}"]))
        source, value = candidates[0]
        for other, other_value in candidates[1:]:
            if better(other_value, value):
                source, value = other, other_value
        best = self.state.best
        if best is None or better(value, best["value"]):
            self.state.best = {
                "epoch": metrics["epoch"],
                "source": source,
                "value": value,
                "checkpoint": None,
            }
            return True
        return False

    # --- checkpoints ------------------------------------------------------------------------

    def _write_checkpoint(
        self, *, mid_epoch: bool, is_best: bool = False, metrics: dict[str, Any] | None = None
    ) -> Path:
        state = self.state
        folder = self.out_dir / "checkpoints"
        name = f"epoch-{state.epoch:03d}.pt" if not mid_epoch else f"epoch-{state.epoch:03d}-step-{state.step:07d}.pt"
        path = folder / name
        if is_best and state.best is not None:
            state.best["checkpoint"] = name
        state.checkpoints = [*(c for c in state.checkpoints if c != name), name]
        guard = self.guard.state_dict(mid_epoch=mid_epoch) if self.guard is not None else None
        if self.cluster.is_main:  # every rank keeps the record; rank 0 alone writes the files
            save_checkpoint(path, {**self._checkpoint_state(), "divergence": guard})
        removed = self._apply_retention(folder)
        self.last_checkpoint = path
        self.callbacks.on_checkpoint(
            CheckpointInfo(
                path=path,
                epoch=state.epoch,
                step=state.step,
                is_best=is_best,
                mid_epoch=mid_epoch,
                metrics=metrics or {},
                removed=tuple(removed),
            )
        )
        return path

    def _apply_retention(self, folder: Path) -> list[Path]:
        """Delete checkpoints the retention rule does not keep: all but the best and the last, by default."""
        if self.spec.training.keep_checkpoints == "all":
            return []
        best = self.state.best["checkpoint"] if self.state.best else None
        keep = {self.state.checkpoints[-1], best}
        removed = [folder / name for name in self.state.checkpoints if name not in keep]
        for path in removed if self.cluster.is_main else []:
            path.unlink(missing_ok=True)
        self.state.checkpoints = [name for name in self.state.checkpoints if name in keep]
        return removed

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "class_names": self.data.class_names,
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "state": self.state.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "clipper": self.clipper.state_dict(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "rng": capture_rng(),
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint["class_names"] != self.data.class_names:
            raise CheckpointError("the checkpoint was trained on other classes than this data set has")
        if checkpoint["spec"]["backbone"]["name"] != self.spec.backbone.name:
            theirs = checkpoint["spec"]["backbone"]["name"]
            raise CheckpointError(f"the checkpoint is of {theirs}, the spec asks for {self.spec.backbone.name}")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        if self.scaler is not None and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.clipper.load_state_dict(checkpoint["clipper"])
        if self.early_stopping is not None and checkpoint["early_stopping"] is not None:
            self.early_stopping.load_state_dict(checkpoint["early_stopping"])
        if self.guard is not None and checkpoint.get("divergence") is not None:
            self.guard.load_state_dict(checkpoint["divergence"])
        self.state = TrainState.from_dict(checkpoint["state"])
        self.step_counter.fill_(self.state.step)
        restore_rng(checkpoint["rng"])

    # --- the end ----------------------------------------------------------------------------

    def _published_model(self) -> tuple[nn.Module, str, int]:
        """The weights to publish: the best epoch's (model or EMA), or the last epoch's better of the two."""
        best = self.state.best
        last_epoch = self.state.epoch
        if self.spec.training.final_weights == "best" and best is not None:
            if best["epoch"] != last_epoch:
                checkpoint = load_checkpoint(self.out_dir / "checkpoints" / best["checkpoint"])
                self.model.load_state_dict(checkpoint["model"])
                if self.ema is not None and checkpoint["ema"] is not None:
                    self.ema.load_state_dict(checkpoint["ema"])
            source, epoch = best["source"], best["epoch"]
        else:
            last = self.state.history[-1]
            monitor = self.monitor
            ema_value = last.get(f"ema_{monitor}") if monitor is not None else None
            source = "model"
            if ema_value is not None and monitor is not None:
                better = ema_value < last[monitor] if monitor_mode(monitor) == "min" else ema_value > last[monitor]
                source = "ema" if better else "model"
            epoch = last_epoch
        module = self.ema.module if source == "ema" and self.ema is not None else self.model
        return module, source, epoch

    def _finish(self, status: Status) -> FitResult:
        module, source, epoch = self._published_model()
        final = {}
        confusion: dict[str, Any] = {"class_names": self.data.class_names, "val": None, "test": None}
        if self.data.val is not None:
            val_metrics, val_matrix = self.evaluate_with_confusion(module, self.data.val)
            final = {f"val_{k}": v for k, v in val_metrics.items()}
            confusion["val"] = confusion_record(val_matrix)
        test = None
        if self.data.test is not None:
            test_metrics, test_matrix = self.evaluate_with_confusion(module, self.data.test)
            test = {f"test_{k}": v for k, v in test_metrics.items()}
            confusion["test"] = confusion_record(test_matrix)
        metrics = {"epoch": epoch, "source": source, **final, **(test or {})}
        if not self.cluster.is_main:  # rank 0 alone publishes
            result = self._result(status)
            result.final, result.test = final, test
            return result
        spec_json = self.spec.model_dump(mode="json")
        weights_path = self.out_dir / "model.safetensors"
        card_path = self.out_dir / "model.json"
        save_weights(weights_path, export_state_dict(module), {"backbone": self.built.info.name})
        card = model_card(
            self.built,
            class_names=self.data.class_names,
            image_size=self.spec.image_size,
            mean=self.data.mean,
            std=self.data.std,
            metrics={"published": metrics, "best": self.state.best, "last": self.state.history[-1]},
            spec=spec_json,
        )
        write_card(card_path, card)
        record = {"status": status, "epochs": self.state.history, "published": metrics}
        write_atomic(self.out_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        write_atomic(self.out_dir / "confusion.json", lambda tmp: tmp.write_text(json.dumps(confusion) + "\n"))
        result = self._result(status)
        result.final, result.test = final, test
        result.weights_path, result.card_path = weights_path, card_path
        return result

    def _result(self, status: Status) -> FitResult:
        return FitResult(
            status=status,
            epochs_completed=self.state.epoch,
            steps=self.state.step,
            history=self.state.history,
            best=self.state.best,
            final=None,
            test=None,
            weights_path=None,
            card_path=None,
            checkpoint_path=getattr(self, "last_checkpoint", None),
        )


def confusion_record(matrix: list[list[int]]) -> dict[str, Any]:
    """A split's confusion matrix (rows: true class, columns: predicted) with each class's accuracy (its recall;
    None for a class the split has no images of)."""
    per_class = [row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)]
    return {"matrix": matrix, "per_class_accuracy": per_class, "images": sum(map(sum, matrix))}


def init_from_normalization(path: Path) -> Normalization | None:
    """The input statistics that weights in ``path`` were trained with, where they are recorded."""
    card = path.with_name("model.json")
    if path.suffix == ".pt":
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError:
            checkpoint = None
        if checkpoint is not None:
            return as_normalization(checkpoint["normalization"])
    if card.is_file():
        preprocessing = json.loads(card.read_text()).get("preprocessing", {})
        if "mean" in preprocessing and "std" in preprocessing:
            return as_normalization(preprocessing)
    return None


def as_normalization(record: dict[str, Any]) -> Normalization:
    """(mean, std) from a record with "mean" and "std" lists of three numbers."""
    mean, std = ([float(v) for v in record[key]] for key in ("mean", "std"))
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def fit(spec: Spec, out_dir: Path, **kwargs: Any) -> FitResult:
    """Run ``spec`` to the end; see ``Trainer``."""
    resume_from = kwargs.pop("resume_from", None)
    return Trainer(spec, out_dir, **kwargs).fit(resume_from=resume_from)
