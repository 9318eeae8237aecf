"""The fit loop: one fine-tuning run from a spec, on its own.

``Trainer(spec, out_dir).fit()`` sets up the device, data, model and optimization in small named
steps, trains and evaluates every epoch (``training.evaluation``), writes an atomic checkpoint of the whole
state each epoch without stalling the loop (``training.checkpoint_writer``), and publishes
``model.safetensors``, ``model.json``, ``metrics.json`` and ``confusion.json`` in ``out_dir``
(``training.publishing``).
It knows nothing of the service: the caller plugs in ``Callbacks``.

The hot loop does not wait on the device: losses, accuracies and gradient norms accumulate in
device tensors and the host reads them every ``log_every_steps`` steps and at epoch end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from training.backbones import BuiltModel, build_model
from training.callbacks import Callbacks, CheckpointInfo, RunInfo, StepMetrics, Stop
from training.catalog import get_backbone
from training.checkpoint import capture_rng, load_checkpoint, restore_rng
from training.checkpoint_writer import CheckpointWriter
from training.clipping import GradientClipper
from training.data import DataBundle, load_data
from training.distributed import Cluster, check_shards, global_batch_size
from training.divergence import DivergenceGuard
from training.errors import CheckpointError, NonFiniteLoss, TrainingError
from training.evaluation import epoch_evaluation, evaluate_split, final_evaluation
from training.freezing import FreezePlan
from training.normalization import normalize
from training.optim import apply_decoupled_weight_decay, build_optimizer, plan_param_groups
from training.publishing import publish, published_model
from training.regularization import EarlyStopping, Mixer, classification_loss, make_ema
from training.runtime import configure_determinism, configure_threads, resolve_runtime, seed_everything
from training.schedule import LRSchedule
from training.seeds import batch_seed
from training.settings import EngineSettings, engine_settings
from training.spec import MonitorMetric, Spec, missing_split_problem, monitor_mode
from training.state import EpochSums, Tally, TrainState

Status = Literal["completed", "early_stopped", "max_steps", "cancelled", "preempted"]
log = logging.getLogger(__name__)

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]


# --- the parts of a run: built once by the setup, never replaced -------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """The run's length and what it watches, from the spec and the data."""

    steps_per_epoch: int  # optimizer steps
    total_steps: int  # epochs x steps_per_epoch, or training.max_steps if sooner
    monitor: MonitorMetric | None  # picks the best epoch; None: no validation data and none named
    test_every_epoch: bool  # a test_ metric is watched: the test split is evaluated each epoch


@dataclass(frozen=True)
class RunParts:
    """What the setup builds, once, in small named steps; the loop trains with it. The objects keep their own
    state (the optimizer's moments, the schedule's clock); the loop's position and record is ``TrainState``."""

    data: DataBundle
    mean: torch.Tensor  # (1, 3, 1, 1) on the device: the input normalization
    std: torch.Tensor
    plan: RunPlan
    built: BuiltModel
    model: nn.Module  # on the device, in its memory format (with SyncBatchNorm where asked)
    freeze: FreezePlan
    params: dict[str, nn.Parameter]  # by name
    agc_excluded: frozenset[str]  # the final classifier layers, which AGC leaves alone
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None  # fp16 on CUDA
    clipper: GradientClipper
    mixer: Mixer | None
    ema: torch.optim.swa_utils.AveragedModel | None
    early_stopping: EarlyStopping | None
    deadline: float  # time.monotonic() past which the run fails (training.max_runtime)

    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)


@dataclass(frozen=True)
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
    ``spec.backbone.init_from`` name, where the spec names them by id (the service resolves them).

    The device and numerics are resolved here, so that a spec this machine cannot run fails before any work;
    ``fit`` builds the run's ``parts`` and trains them."""

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
        runtime = resolve_runtime(spec)
        self.runtime = replace(runtime, device=self.cluster.device(runtime.device))
        self.state = TrainState(tally=Tally.on(self.runtime.device))
        divergence = spec.training.divergence
        self.guard = DivergenceGuard(divergence, self) if divergence is not None else None
        self._parts: RunParts | None = None  # set once, by fit's setup
        self.checkpoint_writer = CheckpointWriter()

    @property
    def parts(self) -> RunParts:
        """The run's parts; there are none before ``fit`` has set them up."""
        if self._parts is None:
            raise RuntimeError("the run is not set up yet: parts exist once fit() has built them")
        return self._parts

    # --- setup ------------------------------------------------------------------------------

    def _setup(self, checkpoint: dict[str, Any] | None, deadline: float) -> RunParts | Stop:
        """The run's parts, step by step. A stop asked for during the setup (decoding a big set takes a while) is
        honoured between its steps; nothing has trained yet, so there is nothing new to checkpoint either way."""
        configure_determinism(self.spec.training.deterministic, self.runtime.device)
        configure_threads(self.settings.torch_threads, ranks_here=self.cluster.world_size)  # one host's ranks
        seed_everything(self.spec.training.seed)
        stop = self._should_stop()
        if stop is not None:
            return stop
        data = self._setup_data(self._normalization(checkpoint))
        plan = self._plan(data)
        stop = self._should_stop()
        if stop is not None:
            return stop
        built, model = self._setup_model(len(data.class_names))
        stop = self._should_stop()
        if stop is not None:
            return stop
        return self._setup_optimization(data, plan, built, model, deadline)

    def _setup_data(self, normalization: Normalization | None) -> DataBundle:
        spec = self.spec
        data = load_data(
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
        check_shards(self.cluster, data.train.num_images, spec.data.batch_size)
        return data

    def _plan(self, data: DataBundle) -> RunPlan:
        t = self.spec.training
        steps_per_epoch = math.ceil(len(data.train) / t.grad_accum_steps)
        total_steps = t.epochs * steps_per_epoch
        if t.max_steps is not None:
            total_steps = min(total_steps, t.max_steps)
        splits = {name for name, count in data.counts.items() if count}
        num_classes = len(data.class_names)
        for where, metric in self.spec.monitors().items():
            problem = missing_split_problem(where, metric, splits)
            if problem is not None:
                raise TrainingError(problem, code="invalid_spec")
            if metric.endswith("acc_top5") and num_classes <= 5:
                raise TrainingError(
                    f"{where}: {metric} needs more than five classes; this data set has {num_classes}",
                    code="invalid_spec",
                )
        return RunPlan(
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            # With no validation data and no metric named, there is none: the last epoch's weights are published.
            monitor=t.monitor or ("val_acc" if "val" in splits else None),
            test_every_epoch=any(m.startswith("test_") for m in self.spec.monitors().values()),
        )

    def _setup_model(self, num_classes: int) -> tuple[BuiltModel, nn.Module]:
        spec = self.spec
        built = build_model(
            spec.backbone, num_classes, spec.image_size, settings=self.settings, init_from=self.init_from
        )
        memory_format = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        model: nn.Module = built.model.to(self.runtime.device).to(memory_format=memory_format)
        if spec.training.sync_batchnorm and self.cluster.active:
            model = self.cluster.sync_batchnorm(model, self.runtime.device)
        return built, model

    def _setup_optimization(
        self, data: DataBundle, plan: RunPlan, built: BuiltModel, model: nn.Module, deadline: float
    ) -> RunParts:
        spec = self.spec
        device = self.runtime.device
        params = dict(model.named_parameters())
        optimizer = build_optimizer(plan_param_groups(built, spec), params, spec)
        self.state.step_lr = optimizer.param_groups[0]["lr"]
        reg = spec.regularization
        classifiers = {built.family.head, *built.family.aux_heads}
        shape = (1, 3, 1, 1)
        return RunParts(
            data=data,
            mean=torch.tensor(data.mean, device=device).view(shape),
            std=torch.tensor(data.std, device=device).view(shape),
            plan=plan,
            built=built,
            model=model,
            freeze=FreezePlan(built, spec.backbone.freeze),
            params=params,
            agc_excluded=frozenset(
                name for name in params if any(name.startswith(final_layer(model, path)) for path in classifiers)
            ),
            optimizer=optimizer,
            schedule=LRSchedule(optimizer, spec, plan.steps_per_epoch),
            scaler=torch.amp.GradScaler("cuda") if self.runtime.grad_scaler else None,
            clipper=GradientClipper(spec.clipping, device, plan.total_steps),
            mixer=Mixer(reg.mixup) if reg.mixup is not None else None,
            ema=make_ema(model, reg.ema.decay) if reg.ema is not None else None,
            early_stopping=EarlyStopping(reg.early_stopping) if reg.early_stopping is not None else None,
            deadline=deadline,
        )

    def _normalization(self, checkpoint: dict[str, Any] | None) -> Normalization | None:
        """Where the input statistics come from: a resumed run's own, the pretrained weights', the
        weights ``init_from`` names (their checkpoint or the model card beside them), or else the data set's."""
        if checkpoint is not None:
            return as_normalization(checkpoint["normalization"])
        backbone = self.spec.backbone
        if backbone.weights is not None:
            weights = get_backbone(backbone.name).find_weights(backbone.weights)
            assert weights is not None
            return weights.mean, weights.std
        if self.init_from is not None:
            return init_from_normalization(self.init_from)
        return None

    # --- the run ----------------------------------------------------------------------------

    def fit(self, resume_from: Path | None = None) -> FitResult:
        if self._parts is not None:
            raise RuntimeError("a Trainer runs once: make a new one (with resume_from) to go on")
        deadline = time.monotonic() + self.spec.training.max_runtime.total_seconds()
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        parts = self._setup(checkpoint, deadline)
        if isinstance(parts, Stop):
            return self._result("cancelled" if parts is Stop.CANCEL else "preempted")
        self._parts = parts
        if checkpoint is not None:
            self.restore(checkpoint)
        parts.freeze.apply(self.state.epoch)  # the trainable count that on_start reports
        self.callbacks.on_start(self._run_info())
        try:
            status = self._train()
        except BaseException:
            self._settle_checkpoint_after_failure()
            raise
        self.checkpoint_writer.wait()  # the last checkpoint is complete (and published) before the run ends
        if status in ("cancelled", "preempted"):
            return self._result(status)
        return self._finish(status)

    def _settle_checkpoint_after_failure(self) -> None:
        """A failing run still completes (and publishes) its pending checkpoint: a resume starts from it. A
        failure of that write is logged, not raised over the run's own error."""
        try:
            self.checkpoint_writer.wait()
        except Exception:
            log.exception("the checkpoint written in the background failed too")

    def _run_info(self) -> RunInfo:
        parts = self.parts
        return RunInfo(
            class_names=parts.data.class_names,
            steps_per_epoch=parts.plan.steps_per_epoch,
            total_steps=parts.plan.total_steps,
            epochs=self.spec.training.epochs,
            start_epoch=self.state.epoch,
            start_step=self.state.step,
            num_params=sum(p.numel() for p in parts.model.parameters()),
            trainable_params=sum(p.numel() for p in parts.model.parameters() if p.requires_grad),
            device=str(self.runtime.device),
            precision=self.runtime.precision,
            in_memory=parts.data.in_memory,
            images=parts.data.counts,
            notes=parts.built.notes,
        )

    def _train(self) -> Status:
        for epoch in range(self.state.epoch, self.spec.training.epochs):
            self.parts.freeze.apply(epoch)
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
        parts, state = self.parts, self.state
        parts.freeze.set_train_mode(epoch)
        self._select_trainable()
        total_batches = len(parts.data.train)
        accum = t.grad_accum_steps
        state.tally.begin_pass(state.sums.seen)
        pass_start = time.perf_counter()
        if self.guard is not None:
            self.guard.begin_epoch(epoch)
        for batch_index, (images, labels) in enumerate(
            parts.data.train.batches(epoch, start=state.batches_done), start=state.batches_done
        ):
            # The micro-batches of one optimizer step: accum of them, fewer at the end of an epoch.
            group_start = batch_index - batch_index % accum
            group_len = min(accum, total_batches - group_start)
            last_of_group = batch_index + 1 == group_start + group_len
            weight = self._shard_weight(labels.shape[0], batch_index) / group_len
            with self.cluster.no_sync(self._train_model(), accumulate=not last_of_group):
                self._forward_backward(images, labels, epoch, batch_index, weight)
            state.sums.seen += labels.shape[0]
            if not last_of_group:
                continue  # accumulate gradients over the group
            self._optimizer_step()
            self.checkpoint_writer.poll()  # the last checkpoint's follow-up, once its background write is done
            state.step += 1
            state.batches_done = batch_index + 1
            if self.guard is not None and self.guard.after_step(epoch):
                return self._train_epoch(epoch)  # rolled back: the epoch goes on from the last good state
            if state.step % t.log_every_steps == 0:
                self._report_step(epoch, step_in_epoch=math.ceil(state.batches_done / accum))
            stop = self._should_stop()
            if stop is None:
                self._check_deadline()
            if stop is not None or (t.max_steps and state.step >= t.max_steps):
                self._close_epoch_sums(pass_start)
                return stop if stop is not None else "max_steps"
        self._close_epoch_sums(pass_start)
        return "done"

    def _select_trainable(self) -> None:
        """This epoch's trainable parameters (a freeze schedule changes them), and the module a step calls:
        (re)wrapped for DDP when the trainable set changed, since DDP reduces the gradients of the parameters
        that required them when it was built."""
        parts, state = self.parts, self.state
        trainable = [(n, p) for n, p in parts.params.items() if p.requires_grad]
        state.trainable = [p for _, p in trainable]
        state.agc_params = [p for n, p in trainable if n not in parts.agc_excluded]
        names = frozenset(n for n, _ in trainable)
        if not self.cluster.active:
            state.train_model = parts.model
        elif names != state.wrapped_for:
            state.train_model = self.cluster.wrap(parts.model, self.runtime.device)
            state.wrapped_for = names

    def _train_model(self) -> nn.Module:
        return self.state.train_model if self.state.train_model is not None else self.parts.model

    def _should_stop(self) -> Stop | None:
        """The caller's stop, agreed by every rank at the same step (rank 0 alone asks the caller)."""
        return self.cluster.agree_stop(self.callbacks.should_stop(), self.runtime.device)

    def _shard_weight(self, shard_images: int, batch_index: int) -> float:
        """This rank's share of the global batch's mean loss: DDP averages gradients over ranks, so a rank
        scales its own mean by its images x ranks / the batch's images (1 with one process; uneven shards
        of a short batch weigh what they hold)."""
        if not self.cluster.active:
            return 1.0
        total = global_batch_size(self.parts.data.train.num_images, self.spec.data.batch_size, batch_index)
        return shard_images * self.cluster.world_size / total

    def _check_deadline(self) -> None:
        """Fail the run once it is past training.max_runtime."""
        if time.monotonic() > self.parts.deadline:
            limit = self.spec.training.max_runtime
            raise TrainingError(f"the run exceeded training.max_runtime ({limit})", code="timeout")

    def _close_epoch_sums(self, pass_start: float) -> None:
        """Move the pass's device sums into the host-side state (one sync) and check the loss stayed finite."""
        sums, tally = self.state.sums, self.state.tally
        seen = torch.tensor(float(sums.seen - tally.seen_before_pass), device=self.runtime.device)
        totals = self.cluster.all_sum(torch.stack([tally.pass_loss, tally.pass_correct, seen]))
        loss, correct, seen_all = totals.tolist()
        self._check_finite()
        sums.loss += loss
        sums.correct += correct
        sums.seen = tally.seen_before_pass + int(seen_all)
        sums.seconds += time.perf_counter() - pass_start

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch_index: int, weight: float
    ) -> None:
        parts, tally = self.parts, self.state.tally
        reg = self.spec.regularization
        x = normalize(images, parts.mean, parts.std, channels_last=self.runtime.channels_last)
        targets: Any = labels
        if parts.mixer is not None:
            generator = torch.Generator().manual_seed(batch_seed("mixup", self.spec.training.seed, epoch, batch_index))
            x, targets = parts.mixer(x, labels, generator)
        with self.runtime.autocast():
            outputs = self._train_model()(x)
        logits, aux = parts.built.split_outputs(outputs)
        loss = classification_loss(logits, targets, reg.label_smoothing)
        total = loss
        for aux_weight, aux_logits in aux:
            total = total + aux_weight * classification_loss(aux_logits, targets, reg.label_smoothing)
        scaled = total * weight
        (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        with torch.no_grad():
            loss = loss.detach()
            tally.last_loss = loss
            tally.pass_loss += loss * labels.shape[0]
            tally.pass_correct += (logits.detach().argmax(dim=1) == labels).sum()
            tally.report_loss += loss
            tally.report_batches += 1
            tally.report_images += labels.shape[0]
            bad = ~torch.isfinite(loss) & (tally.first_bad_step < 0)
            tally.first_bad_step = torch.where(bad, tally.step_counter + 1, tally.first_bad_step)

    def _optimizer_step(self) -> None:
        parts, state = self.parts, self.state
        optimizer, scaler = parts.optimizer, parts.scaler
        if scaler is not None:
            scaler.unscale_(optimizer)
        parts.clipper(state.trainable, state.agc_params)
        apply_decoupled_weight_decay(optimizer)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if parts.ema is not None:
            parts.ema.update_parameters(parts.model)
        state.step_lr = optimizer.param_groups[0]["lr"]  # the head's lr this step used
        parts.schedule.after_step()
        state.tally.step_counter += 1

    def _check_finite(self) -> None:
        bad = int(self.cluster.all_max(self.state.tally.first_bad_step.clone()).item())
        if bad >= 0:
            raise NonFiniteLoss(step=bad, epoch=(bad - 1) // self.parts.plan.steps_per_epoch + 1)

    def _report_step(self, epoch: int, step_in_epoch: int) -> None:
        # A host sync: only every log_every_steps steps. Under DDP the gradients (so their norm) are the same on
        # every rank: the losses and norms are averaged over the ranks, the images summed.
        parts, tally = self.parts, self.state.tally
        # The last checkpoint is announced before the steps after it are: the service records (and a resume finds)
        # them in that order. A wait only when the write is slower than log_every_steps steps.
        self.checkpoint_writer.wait()
        images = torch.tensor(float(tally.report_images), device=tally.report_loss.device)
        report = torch.stack(
            [tally.report_loss / max(tally.report_batches, 1), parts.clipper.last_norm.float(), images]
        )
        loss_sum, norm_sum, images_all = self.cluster.all_sum(report).tolist()
        loss, grad_norm = loss_sum / self.cluster.world_size, norm_sum / self.cluster.world_size
        self._check_finite()
        now = time.perf_counter()
        metrics = StepMetrics(
            epoch=epoch + 1,
            step=self.state.step,
            step_in_epoch=step_in_epoch,
            steps_per_epoch=parts.plan.steps_per_epoch,
            total_steps=parts.plan.total_steps,
            loss=loss,
            lr=self.state.step_lr,
            grad_norm=grad_norm,
            images_per_second=images_all / max(now - tally.report_started, 1e-9),
            elapsed_seconds=now - tally.report_started,
        )
        tally.report_loss.zero_()
        tally.report_batches = tally.report_images = 0
        tally.report_started = now
        self.callbacks.on_step(metrics)

    def evaluate(self, model: nn.Module, source: Any) -> dict[str, float]:
        """Loss (plain cross entropy), accuracy and top-5 accuracy (more than five classes) on a split."""
        return evaluate_split(model, source, self.parts, self.runtime, self.cluster, confusion=False)[0]

    def _end_epoch(self, epoch: int) -> bool:
        """Evaluate, record, checkpoint and report an epoch. True when early stopping says stop."""
        eval_start = time.perf_counter()
        parts, state = self.parts, self.state
        sums = state.sums
        evaluated = epoch_evaluation(parts, self.runtime, self.cluster)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": sums.loss / max(sums.seen, 1),
            "train_acc": sums.correct / max(sums.seen, 1),
            **{k: v for k, v in evaluated.items() if k.startswith("val_")},
            "lr": state.step_lr,  # of the epoch's last step
            **parts.clipper.epoch_metrics(),
            "trainable_params": sum(p.numel() for p in state.trainable),
            "images_per_second": sums.seen / max(sums.seconds, 1e-9),
            **{k: v for k, v in evaluated.items() if not k.startswith("val_")},
        }
        metrics["epoch_seconds"] = sums.seconds + (time.perf_counter() - eval_start)
        is_best = self._update_best(metrics)
        parts.schedule.after_epoch(metrics)
        stop_early = parts.early_stopping.update(metrics) if parts.early_stopping is not None else False
        state.epoch = epoch + 1
        state.batches_done = 0
        state.sums = EpochSums()
        state.history.append(metrics)
        parts.clipper.reset_epoch()
        self._write_checkpoint(mid_epoch=False, is_best=is_best, metrics=metrics)
        self.callbacks.on_epoch(metrics)
        return stop_early

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        """Track the best epoch by ``training.monitor``, the EMA weights competing with the model's."""
        monitor = self.parts.plan.monitor
        if monitor is None:
            return False
        better = (lambda a, b: a < b) if monitor_mode(monitor) == "min" else (lambda a, b: a > b)
        candidates = [("model", metrics[monitor])]
        if self.parts.ema is not None and f"ema_{monitor}" in metrics:
            candidates.append(("ema", metrics[f"ema_{monitor}"]))
        source, value = candidates[0]
        for other, other_value in candidates[1:]:
            if better(other_value, value):
                source, value = other, other_value
        best = self.state.best
        if best is None or better(value, best["value"]):
            self.state.best = {"epoch": metrics["epoch"], "source": source, "value": value, "checkpoint": None}
            return True
        return False

    # --- checkpoints ------------------------------------------------------------------------

    def _write_checkpoint(
        self, *, mid_epoch: bool, is_best: bool = False, metrics: dict[str, Any] | None = None
    ) -> None:
        """Record a checkpoint and have it written in the background (``training.checkpoint_writer``): its state is
        copied now, and the retention rule's deletions and ``on_checkpoint`` follow once the file is complete."""
        state = self.state
        folder = self.out_dir / "checkpoints"
        name = f"epoch-{state.epoch:03d}.pt" if not mid_epoch else f"epoch-{state.epoch:03d}-step-{state.step:07d}.pt"
        path = folder / name
        if is_best and state.best is not None:
            state.best["checkpoint"] = name
        state.checkpoints = [*(c for c in state.checkpoints if c != name), name]
        guard = self.guard.state_dict(mid_epoch=mid_epoch) if self.guard is not None else None
        content = {**self.checkpoint_state(), "divergence": guard}  # the record before the retention below
        removed = self._apply_retention(folder)
        info = CheckpointInfo(
            path=path,
            epoch=state.epoch,
            step=state.step,
            is_best=is_best,
            mid_epoch=mid_epoch,
            metrics=metrics or {},
            removed=tuple(removed),
        )

        def written() -> None:  # on the loop's thread, once the file is complete (on rank 0; at once elsewhere)
            for old in removed if self.cluster.is_main else []:
                old.unlink(missing_ok=True)
            state.last_checkpoint = path
            self.callbacks.on_checkpoint(info)

        if self.cluster.is_main:  # every rank keeps the record; rank 0 alone writes the files
            self.checkpoint_writer.submit(path, content, then=written)
        else:
            written()

    def _apply_retention(self, folder: Path) -> list[Path]:
        """The checkpoints the retention rule does not keep (all but the best and the last, by default): out of
        the record now, their files deleted once the new checkpoint is written."""
        if self.spec.training.keep_checkpoints == "all":
            return []
        best = self.state.best["checkpoint"] if self.state.best else None
        keep = {self.state.checkpoints[-1], best}
        removed = [folder / name for name in self.state.checkpoints if name not in keep]
        self.state.checkpoints = [name for name in self.state.checkpoints if name in keep]
        return removed

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds but the divergence guard's record (the guard snapshots this too)."""
        parts = self.parts
        return {
            "spec": self.spec.model_dump(mode="json"),
            "class_names": parts.data.class_names,
            "normalization": {"mean": list(parts.data.mean), "std": list(parts.data.std)},
            "state": self.state.to_dict(),
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "schedule": parts.schedule.state_dict(),
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "clipper": parts.clipper.state_dict(),
            "early_stopping": parts.early_stopping.state_dict() if parts.early_stopping is not None else None,
            "rng": capture_rng(),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load ``checkpoint_state``'s (a checkpoint's, or the divergence guard's snapshot) into the run."""
        parts = self.parts
        if checkpoint["class_names"] != parts.data.class_names:
            raise CheckpointError("the checkpoint was trained on other classes than this data set has")
        if checkpoint["spec"]["backbone"]["name"] != self.spec.backbone.name:
            theirs = checkpoint["spec"]["backbone"]["name"]
            raise CheckpointError(f"the checkpoint is of {theirs}, the spec asks for {self.spec.backbone.name}")
        parts.model.load_state_dict(checkpoint["model"])
        parts.optimizer.load_state_dict(checkpoint["optimizer"])
        parts.schedule.load_state_dict(checkpoint["schedule"])
        if parts.scaler is not None and checkpoint["scaler"] is not None:
            parts.scaler.load_state_dict(checkpoint["scaler"])
        if parts.ema is not None and checkpoint["ema"] is not None:
            parts.ema.load_state_dict(checkpoint["ema"])
        parts.clipper.load_state_dict(checkpoint["clipper"])
        if parts.early_stopping is not None and checkpoint["early_stopping"] is not None:
            parts.early_stopping.load_state_dict(checkpoint["early_stopping"])
        if self.guard is not None and checkpoint.get("divergence") is not None:
            self.guard.load_state_dict(checkpoint["divergence"])
        self.state.load_dict(checkpoint["state"])
        restore_rng(checkpoint["rng"])

    # --- the end ----------------------------------------------------------------------------

    def _finish(self, status: Status) -> FitResult:
        """Evaluate the published weights; rank 0 writes them with their card, metrics.json and confusion.json."""
        parts = self.parts
        module, source, epoch = published_model(parts, self.state, self.spec, self.out_dir)
        final, test, confusion = final_evaluation(module, parts, self.runtime, self.cluster)
        if not self.cluster.is_main:  # rank 0 alone publishes
            return self._result(status, final=final, test=test)
        metrics = {"epoch": epoch, "source": source, **final, **(test or {})}
        weights_path, card_path = publish(
            self.out_dir, module, parts, self.state, self.spec, status=status, metrics=metrics, confusion=confusion
        )
        return self._result(status, final=final, test=test, weights_path=weights_path, card_path=card_path)

    def _result(
        self,
        status: Status,
        *,
        final: dict[str, Any] | None = None,
        test: dict[str, float] | None = None,
        weights_path: Path | None = None,
        card_path: Path | None = None,
    ) -> FitResult:
        return FitResult(
            status=status,
            epochs_completed=self.state.epoch,
            steps=self.state.step,
            history=self.state.history,
            best=self.state.best,
            final=final,
            test=test,
            weights_path=weights_path,
            card_path=card_path,
            checkpoint_path=self.state.last_checkpoint,
        )


def final_layer(model: nn.Module, path: str) -> str:
    """The parameter-name prefix of a classifier's last layer (the whole of a plain head)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return path + "."
    if isinstance(module, nn.Sequential):
        return f"{path}.{len(module) - 1}."
    return path + "."


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
