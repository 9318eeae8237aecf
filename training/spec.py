"""The fine-tuning spec: the full, validated description of one run.

Pydantic v2 models, no torch. The same model is the CLI's input, the API's job spec and what a
checkpoint records. Every model forbids unknown keys; variants are discriminated unions on
``name``/``mode``/``strategy``; rules that span fields are checked in ``Spec`` and reported at the
path of the field to change (``data.image_size``, ``scheduler.milestones``).

Units: durations in the scheduler, early stopping and freezing are in epochs; ``warmup_steps``
is in optimizer steps; learning rates are per optimizer step at the spec's batch size.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.catalog import get_backbone

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
UnitInterval = Annotated[float, Field(gt=0.0, le=1.0)]

MonitorMetric = Literal[
    "val_loss", "val_acc", "val_acc_top5", "train_loss", "train_acc", "test_loss", "test_acc", "test_acc_top5"
]
DATASET_ID = re.compile(r"^ds_[0-9A-Za-z]+$")


def monitor_mode(metric: MonitorMetric) -> Literal["min", "max"]:
    """Whether a smaller or a larger value of ``metric`` is better."""
    return "min" if metric.endswith("loss") else "max"


Problem = tuple[tuple[str | int, ...], str, Any]  # (location below the model, message, offending value)


class StrictModel(BaseModel):
    """Unknown keys are errors; rules that span fields report at the path of the field to change."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        model = handler(data)
        problems = model._rule_problems()
        if problems:
            # Raised from a wrap validator, a ValidationError keeps its locations, nested under the parent's.
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(type=PydanticCustomError("spec_rule", message), loc=loc, input=value)
                    for loc, message, value in problems
                ],
            )
        model._resolve_defaults()
        return model

    def _rule_problems(self) -> list[Problem]:
        """Cross-field rules; each problem names the field, relative to this model."""
        return []

    def _resolve_defaults(self) -> None:
        """Fill defaults that depend on other fields, so the stored spec says what runs."""


def variant_tags(union: Any) -> list[str]:
    """The tags of a union of ``Annotated[Model, Tag(...)]`` members, in their order."""
    return [str(get_args(member)[1].tag) for member in get_args(union)]


def variant(tag: str, default: str, union: Any) -> Discriminator:
    """Chooses a member of ``union`` by its ``tag`` field; a missing tag means ``default`` (so
    ``optimizer: {lr: 0.1}`` is SGD at 0.1); an unknown one is an error listing the valid tags."""
    names = variant_tags(union)

    def choose(value: Any) -> str:
        return str(value.get(tag, default) if isinstance(value, dict) else getattr(value, tag, default))

    return Discriminator(
        choose, custom_error_type="unknown_variant", custom_error_message=f"{tag} must be one of {', '.join(names)}"
    )


# --- backbone -------------------------------------------------------------------------------


class HeadSpec(StrictModel):
    """The new classification head, placed where the backbone's family keeps its classifier."""

    dropout: Fraction = Field(0.0, description="Dropout before each linear layer of the new head.")
    hidden: list[PositiveInt] = Field(
        default_factory=list, max_length=4, description="Widths of hidden layers between features and logits."
    )
    activation: Literal["relu", "gelu"] = Field("relu", description="Activation after each hidden layer.")

    @property
    def is_plain(self) -> bool:
        """A single linear layer, as torchvision builds it: the weights load into torchvision as they are."""
        return not self.hidden and self.dropout == 0.0


class _FreezeBase(StrictModel):
    freeze_bn: bool = Field(False, description="Batch-norm layers keep their running statistics and affine weights.")


class FreezeNone(_FreezeBase):
    """Full fine-tune: every parameter trains."""

    strategy: Literal["none"] = "none"


class FreezeLinearProbe(_FreezeBase):
    """Only the new head trains; the backbone is frozen, in eval mode."""

    strategy: Literal["linear_probe"] = "linear_probe"


class FreezeStages(_FreezeBase):
    """The first ``frozen_stages`` stages (from the stem) are frozen for the whole run."""

    strategy: Literal["stages"] = "stages"
    frozen_stages: PositiveInt = 1


class FreezeGradual(_FreezeBase):
    """Start with the head only; unfreeze one more stage, from the head down, at each listed epoch."""

    strategy: Literal["gradual"] = "gradual"
    unfreeze_at: list[PositiveInt] = Field(
        default_factory=lambda: [1, 2, 3],
        min_length=1,
        description="Epochs (0-based) at which a stage unfreezes.",
    )

    @field_validator("unfreeze_at")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be strictly increasing")
        return value


FreezeVariants = (
    Annotated[FreezeNone, Tag("none")]
    | Annotated[FreezeLinearProbe, Tag("linear_probe")]
    | Annotated[FreezeStages, Tag("stages")]
    | Annotated[FreezeGradual, Tag("gradual")]
)
Freeze = Annotated[FreezeVariants, variant("strategy", "none", FreezeVariants)]


class BackboneSpec(StrictModel):
    name: str = Field("resnet18", description="A torchvision classification model name.")
    weights: str | None = Field(
        None,
        description="Pretrained weights: 'DEFAULT' or a torchvision enum member such as 'IMAGENET1K_V1'.",
    )
    init_from: str | None = Field(
        None,
        description="Start from these weights instead: a safetensors or torch file for local runs; "
        "an earlier job (ftjob_...) or checkpoint (ckpt_...) over the API.",
    )
    head: HeadSpec = Field(default_factory=HeadSpec)
    freeze: Freeze = Field(default_factory=FreezeNone)
    dropout: Fraction | None = Field(
        None,
        description="Rate of the dropout layers the backbone already has (VGG, EfficientNet, MobileNet...).",
    )
    stochastic_depth: Fraction | None = Field(
        None, description="Stochastic depth rate, for backbones whose torchvision builder takes one."
    )

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        try:
            get_backbone(value)
        except KeyError as error:
            raise PydanticCustomError("unknown_backbone", str(error.args[0])) from None
        return value

    def _rule_problems(self) -> list[Problem]:
        info = get_backbone(self.name)
        problems: list[Problem] = []
        if self.weights is not None and info.find_weights(self.weights) is None:
            choices = ", ".join(info.weights_names())
            problems.append(
                (
                    ("weights",),
                    f"{self.name} has no weights '{self.weights}'; choose one of {choices}",
                    self.weights,
                )
            )
        if self.weights is not None and self.init_from is not None:
            problems.append((("init_from",), "give backbone.weights or backbone.init_from, not both", self.init_from))
        if self.dropout is not None and info.dropout_kwarg is None:
            message = f"{self.name} has no dropout layers of its own; use backbone.head.dropout"
            problems.append((("dropout",), message, self.dropout))
        if self.stochastic_depth is not None and info.stochastic_depth_kwarg is None:
            message = f"the torchvision builder of {self.name} takes no stochastic depth"
            problems.append((("stochastic_depth",), message, self.stochastic_depth))
        return problems


def freeze_problems(spec: Spec) -> list[Problem]:
    """backbone.freeze against the backbone's stages and the run's epochs."""
    info = get_backbone(spec.backbone.name)
    freeze, epochs = spec.backbone.freeze, spec.training.epochs
    at = ("backbone", "freeze")
    problems: list[Problem] = []
    if isinstance(freeze, FreezeStages) and freeze.frozen_stages > info.num_stages:
        problems.append(((*at, "frozen_stages"), f"{info.name} has {info.num_stages} stages", freeze.frozen_stages))
    if isinstance(freeze, FreezeGradual):
        if freeze.unfreeze_at[-1] >= epochs:
            message = f"epoch {freeze.unfreeze_at[-1]} is never reached in a run of {epochs} epochs"
            problems.append(((*at, "unfreeze_at"), message, freeze.unfreeze_at))
        if len(freeze.unfreeze_at) > info.num_stages:
            message = f"{info.name} has only {info.num_stages} stages to unfreeze"
            problems.append(((*at, "unfreeze_at"), message, freeze.unfreeze_at))
    return problems


# --- data -----------------------------------------------------------------------------------


class AugmentSpec(StrictModel):
    """Train-time augmentation. Evaluation always sees the plain resized image."""

    hflip: bool = Field(True, description="Random horizontal flip.")
    random_crop: bool = Field(
        True,
        description="Random crop with padding for small images (up to 64 px), random resized crop for larger ones.",
    )
    crop_padding: int | None = Field(
        None, ge=0, description="Padding of the small-image random crop, in pixels (default: image_size / 8)."
    )
    min_crop_scale: UnitInterval = Field(0.35, description="Smallest area fraction of a random resized crop.")


class DataSpec(StrictModel):
    path: str | None = Field(None, description="A folder or archive in ImageFolder layout (local runs).")
    dataset: str | None = Field(None, description="An uploaded data set, by id (ds_...), over the API.")
    image_size: PositiveInt | Literal["native"] = Field(
        32, description="Square input size in pixels, or 'native' for the backbone's own."
    )
    val_split: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.1,
        description="Fraction of train/ held out (stratified, seeded) when there is no val/; "
        "0: train on all of train/, without validation.",
    )
    batch_size: PositiveInt = Field(
        64,
        description="Images per micro-batch across all processes: with training.devices N, each of the N takes "
        "about batch_size / N (the global batch stays this; the learning rate is not rescaled).",
    )
    eval_batch_size: PositiveInt | None = Field(None, description="Default: twice batch_size.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    subset_per_class: PositiveInt | None = Field(
        None, description="Train on at most this many images per class (seeded): a quick run on a big set."
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="Loader processes when the set streams from disk; 'auto' uses the CPUs there are."
    )
    in_memory: bool | Literal["auto"] = Field(
        "auto", description="Decode the set once into memory; 'auto' does so below the engine's size limit."
    )

    @field_validator("num_workers")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 or more, or 'auto'")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_id(cls, value: str | None) -> str | None:
        if value is not None and not DATASET_ID.match(value):
            raise ValueError("must be a data set id such as ds_01J...")
        return value

    def _rule_problems(self) -> list[Problem]:
        if (self.path is None) == (self.dataset is None):
            message = "give exactly one of data.path (a local folder or archive) or data.dataset (ds_...)"
            return [(("path",), message, self.path)]
        return []


def image_size_problems(spec: Spec) -> list[Problem]:
    """data.image_size against what the backbone accepts."""
    info = get_backbone(spec.backbone.name)
    size = spec.image_size
    if size < info.min_size:
        return [(("data", "image_size"), f"{size} px is below the {info.min_size} px that {info.name} accepts", size)]
    if size % info.size_multiple:
        return [(("data", "image_size"), f"{info.name} needs a multiple of {info.size_multiple} px, got {size}", size)]
    return []


# --- optimizer ------------------------------------------------------------------------------


class _OptimizerBase(StrictModel):
    lr: PositiveFloat = Field(0.01, description="Learning rate of the new head.")
    backbone_lr_mult: NonNegativeFloat = Field(1.0, description="Backbone learning rate relative to the head's.")
    layer_decay: UnitInterval | None = Field(
        None,
        description="Each stage, from the head down, gets this factor more of decay: lr * layer_decay**depth.",
    )


class SGDOptimizer(_OptimizerBase):
    name: Literal["sgd"] = "sgd"
    momentum: Fraction = 0.9
    dampening: Fraction = 0.0
    nesterov: bool = False

    @property
    def has_momentum(self) -> bool:
        return self.momentum > 0.0

    def _rule_problems(self) -> list[Problem]:
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            return [(("nesterov",), "nesterov needs momentum above 0 and dampening 0", True)]
        return []


class _AdamBase(_OptimizerBase):
    lr: PositiveFloat = 1e-3
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    amsgrad: bool = False

    @property
    def has_momentum(self) -> bool:
        return True  # beta1 is Adam's momentum


class AdamOptimizer(_AdamBase):
    """Adam; with `regularization.weight_decay_mode: decoupled` it runs as torch's AdamW."""

    name: Literal["adam"] = "adam"


class AdamWOptimizer(_AdamBase):
    """Adam whose weight decay defaults to decoupled (torch's AdamW). The name sets only that default: with
    `regularization.weight_decay_mode: l2` it runs as torch's Adam, L2 decay added to the gradient."""

    name: Literal["adamw"] = "adamw"


class RMSpropOptimizer(_OptimizerBase):
    name: Literal["rmsprop"] = "rmsprop"
    alpha: Fraction = 0.99
    eps: PositiveFloat = 1e-8
    momentum: Fraction = 0.0
    centered: bool = False

    @property
    def has_momentum(self) -> bool:
        return self.momentum > 0.0


OptimizerVariants = (
    Annotated[SGDOptimizer, Tag("sgd")]
    | Annotated[AdamOptimizer, Tag("adam")]
    | Annotated[AdamWOptimizer, Tag("adamw")]
    | Annotated[RMSpropOptimizer, Tag("rmsprop")]
)
Optimizer = Annotated[OptimizerVariants, variant("name", "sgd", OptimizerVariants)]


# --- regularization -------------------------------------------------------------------------


class MixupSpec(StrictModel):
    """Mixup and CutMix with soft targets (one of them per batch, chosen by ``switch_prob``)."""

    mixup_alpha: NonNegativeFloat = Field(0.2, description="Beta(alpha, alpha) of mixup; 0 turns mixup off.")
    cutmix_alpha: NonNegativeFloat = Field(0.0, description="Beta(alpha, alpha) of CutMix; 0 turns CutMix off.")
    prob: Probability = Field(1.0, description="Probability that a batch is mixed at all.")
    switch_prob: Probability = Field(0.5, description="With both on: probability of CutMix rather than mixup.")

    def _rule_problems(self) -> list[Problem]:
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            return [(("mixup_alpha",), "set mixup_alpha or cutmix_alpha above 0, or leave mixup out", 0.0)]
        return []


class EMASpec(StrictModel):
    """An exponential moving average of the weights, evaluated alongside the model every epoch."""

    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999


class EarlyStoppingSpec(StrictModel):
    monitor: MonitorMetric = "val_loss"
    mode: Literal["min", "max"] | None = Field(None, description="Default: min for losses, max for accuracies.")
    patience: PositiveInt = 3
    min_delta: NonNegativeFloat = 0.0

    def _resolve_defaults(self) -> None:
        if self.mode is None:
            self.mode = monitor_mode(self.monitor)


class RegularizationSpec(StrictModel):
    weight_decay: NonNegativeFloat = 5.0e-4
    weight_decay_mode: Literal["l2", "decoupled"] | None = Field(
        None,
        description="l2: added to the gradient (classic SGD); decoupled: applied to the weights (AdamW). "
        "Default: decoupled for adamw, l2 otherwise. The mode decides, not the optimizer's name: adam with "
        "decoupled runs as torch's AdamW, adamw with l2 as torch's Adam.",
    )
    decay_norm_and_bias: bool = Field(False, description="Also decay biases and normalization weights.")
    label_smoothing: Fraction = 0.0
    mixup: MixupSpec | None = None
    ema: EMASpec | None = None
    early_stopping: EarlyStoppingSpec | None = None


# --- gradient clipping ----------------------------------------------------------------------


class ClipNone(StrictModel):
    mode: Literal["none"] = "none"


class ClipNorm(StrictModel):
    """Rescale all gradients together so that their total norm is at most ``max_norm``."""

    mode: Literal["norm"] = "norm"
    max_norm: PositiveFloat = 1.0
    norm_type: Literal[2, "inf"] = 2


class ClipValue(StrictModel):
    """Clamp every gradient element to [-clip_value, clip_value]."""

    mode: Literal["value"] = "value"
    clip_value: PositiveFloat = 1.0


class ClipAGC(StrictModel):
    """Adaptive gradient clipping (NFNets), unit-wise; the final classifier is left out."""

    mode: Literal["agc"] = "agc"
    clip_factor: PositiveFloat = 0.01
    eps: PositiveFloat = 1e-3


class ClipAuto(StrictModel):
    """AutoClip: clip the total norm at a percentile of the norms seen so far."""

    mode: Literal["autoclip"] = "autoclip"
    percentile: Annotated[float, Field(gt=0.0, le=100.0)] = 10.0


ClippingVariants = (
    Annotated[ClipNone, Tag("none")]
    | Annotated[ClipNorm, Tag("norm")]
    | Annotated[ClipValue, Tag("value")]
    | Annotated[ClipAGC, Tag("agc")]
    | Annotated[ClipAuto, Tag("autoclip")]
)
Clipping = Annotated[ClippingVariants, variant("mode", "none", ClippingVariants)]


# --- learning-rate schedules ----------------------------------------------------------------


class _ScheduleBase(StrictModel):
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    warmup_steps: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Warmup in optimizer steps instead of epochs (needs interval: step)."
    )
    warmup_start_factor: UnitInterval = Field(0.1, description="Warmup starts at this fraction of the lr.")
    interval: Literal["step", "epoch"] = Field("step", description="Update the lr every optimizer step or epoch.")

    def _rule_problems(self) -> list[Problem]:
        if self.warmup_steps is not None:
            if self.warmup_epochs:
                return [(("warmup_steps",), "give warmup_epochs or warmup_steps, not both", self.warmup_steps)]
            if self.interval != "step":
                return [(("warmup_steps",), "warmup_steps needs interval: step", self.warmup_steps)]
        return []

    @property
    def has_warmup(self) -> bool:
        return bool(self.warmup_epochs or self.warmup_steps)


class ConstantSchedule(_ScheduleBase):
    name: Literal["constant"] = "constant"


class StepSchedule(_ScheduleBase):
    """Piecewise constant: multiply by ``gamma`` every ``step_size`` epochs."""

    name: Literal["step"] = "step"
    step_size: PositiveInt = 10
    gamma: UnitInterval = 0.1


class MultiStepSchedule(_ScheduleBase):
    name: Literal["multistep"] = "multistep"
    milestones: list[PositiveInt] = Field(default_factory=lambda: [30, 60], min_length=1)
    gamma: UnitInterval = 0.1

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be strictly increasing")
        return value


class ExponentialSchedule(_ScheduleBase):
    name: Literal["exponential"] = "exponential"
    gamma: UnitInterval = Field(0.9, description="Factor per epoch.")


class CosineSchedule(_ScheduleBase):
    name: Literal["cosine"] = "cosine"
    t_max: PositiveInt | None = Field(None, description="Epochs of the half cosine; default: the rest of the run.")
    min_lr: NonNegativeFloat = 0.0


class CosineRestartsSchedule(_ScheduleBase):
    name: Literal["cosine_restarts"] = "cosine_restarts"
    t_0: PositiveInt = Field(10, description="Epochs of the first cycle.")
    t_mult: PositiveInt = Field(1, description="Each cycle is this many times longer than the last.")
    min_lr: NonNegativeFloat = 0.0


class PolynomialSchedule(_ScheduleBase):
    name: Literal["polynomial"] = "polynomial"
    power: PositiveFloat = 1.0
    total_epochs: PositiveInt | None = Field(None, description="Epochs until the lr reaches 0; default: the run.")


class LinearSchedule(_ScheduleBase):
    name: Literal["linear"] = "linear"
    end_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    total_epochs: PositiveInt | None = Field(None, description="Epochs until end_factor; default: the run.")


class OneCycleSchedule(_ScheduleBase):
    name: Literal["onecycle"] = "onecycle"
    max_lr: PositiveFloat | None = Field(None, description="Peak lr of the head; default: optimizer.lr.")
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    three_phase: bool = False
    cycle_momentum: bool = False


class PlateauSchedule(_ScheduleBase):
    """Reduce the lr by ``factor`` when ``monitor`` stops improving; reacts at epoch ends."""

    name: Literal["plateau"] = "plateau"
    monitor: MonitorMetric = "val_loss"
    mode: Literal["min", "max"] | None = Field(None, description="Default: min for losses, max for accuracies.")
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 2
    threshold: NonNegativeFloat = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: NonNegativeFloat = 0.0

    def _resolve_defaults(self) -> None:
        if self.mode is None:
            self.mode = monitor_mode(self.monitor)


SchedulerVariants = (
    Annotated[ConstantSchedule, Tag("constant")]
    | Annotated[StepSchedule, Tag("step")]
    | Annotated[MultiStepSchedule, Tag("multistep")]
    | Annotated[ExponentialSchedule, Tag("exponential")]
    | Annotated[CosineSchedule, Tag("cosine")]
    | Annotated[CosineRestartsSchedule, Tag("cosine_restarts")]
    | Annotated[PolynomialSchedule, Tag("polynomial")]
    | Annotated[LinearSchedule, Tag("linear")]
    | Annotated[OneCycleSchedule, Tag("onecycle")]
    | Annotated[PlateauSchedule, Tag("plateau")]
)
Scheduler = Annotated[SchedulerVariants, variant("name", "constant", SchedulerVariants)]


def scheduler_problems(spec: Spec) -> list[Problem]:
    """The scheduler against the run's epochs and the optimizer."""
    sched, epochs = spec.scheduler, spec.training.epochs
    problems: list[Problem] = []
    if sched.warmup_epochs >= epochs:
        message = f"warmup of {sched.warmup_epochs} epochs must be shorter than the run ({epochs} epochs)"
        problems.append((("scheduler", "warmup_epochs"), message, sched.warmup_epochs))
    if isinstance(sched, MultiStepSchedule):
        if sched.milestones[-1] >= epochs:
            message = f"milestone {sched.milestones[-1]} is never reached in a run of {epochs} epochs"
            problems.append((("scheduler", "milestones"), message, sched.milestones))
        if sched.milestones[0] <= sched.warmup_epochs:
            message = f"milestone {sched.milestones[0]} falls inside the {sched.warmup_epochs}-epoch warmup"
            problems.append((("scheduler", "milestones"), message, sched.milestones))
    if isinstance(sched, OneCycleSchedule):
        if sched.has_warmup:
            problems.append((("scheduler", "warmup_epochs"), "onecycle warms up by itself: set pct_start instead", 0))
        if sched.cycle_momentum and not spec.optimizer.has_momentum:
            message = f"optimizer {spec.optimizer.name} has no momentum to cycle"
            problems.append((("scheduler", "cycle_momentum"), message, True))
    return problems


# --- training -------------------------------------------------------------------------------


class DivergenceSpec(StrictModel):
    """A guard against a run that blows up: on a non-finite loss, or one above ``spike_factor`` times its
    recent average, stop, or roll back to the last good state (kept in memory every ``snapshot_every_steps``
    steps) with every group's learning rate times ``lr_factor``. It reads the loss every step (a host sync)."""

    action: Literal["stop", "rollback"] = Field(
        "rollback", description="stop: fail naming the step; rollback: go back to the last good state, the lr cut."
    )
    spike_factor: Annotated[float, Field(gt=1.0)] | None = Field(
        5.0, description="A loss above this many times the average of the last good steps counts; null: only NaN/inf."
    )
    lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.5, description="Each rollback multiplies the learning rate of every group by this."
    )
    max_rollbacks: NonNegativeInt = Field(3, description="Rollbacks allowed before the run fails (non_finite_loss).")
    snapshot_every_steps: PositiveInt = Field(10, description="Optimizer steps between in-memory snapshots.")
    window_steps: Annotated[int, Field(ge=2)] = Field(20, description="Good steps the recent average is taken over.")


class TrainingSpec(StrictModel):
    epochs: PositiveInt = 3
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast where the device runs bf16 natively (recent GPUs; CPUs with "
        "AVX512-BF16 or AMX, unless deterministic), else fp32. fp16 (with a grad scaler) needs CUDA.",
    )
    deterministic: bool = Field(False, description="Deterministic kernels: same spec and seed, same metrics.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool | Literal["auto"] = Field("auto", description="auto: on CUDA for convolutional backbones.")
    devices: PositiveInt | Literal["all"] = Field(
        1,
        description="Processes of one job, one per device (DistributedDataParallel; NCCL on GPUs, gloo on the "
        "CPU); all: every GPU of the worker. data.batch_size stays the global batch, split across the "
        "processes, and the learning rate is not rescaled.",
    )
    sync_batchnorm: bool = Field(
        False, description="With devices > 1: batch norm statistics over the global batch (SyncBatchNorm; CUDA)."
    )
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    max_steps: PositiveInt | None = Field(None, description="Stop after this many optimizer steps (smoke runs).")
    monitor: MonitorMetric | None = Field(
        None,
        description="The metric that picks the best epoch (a test_ metric evaluates test/ every epoch). "
        "Default: val_acc; none without validation data (val_split: 0 and no val/), "
        "and then the last epoch's weights are published.",
    )
    final_weights: Literal["best", "last"] = Field("best", description="Which epoch's weights are published.")
    keep_checkpoints: Literal["best_and_last", "all"] = Field(
        "best_and_last", description="Checkpoints kept on disk: the best and the last, or every epoch's."
    )
    log_every_steps: PositiveInt = Field(20, description="Step metrics (and their host sync) every N steps.")
    max_runtime: timedelta = Field(
        timedelta(hours=24), description="Wall-clock limit of the job (seconds or ISO 8601 duration)."
    )
    divergence: DivergenceSpec | None = Field(
        None, description="Stop or roll back a run whose loss turns non-finite or spikes; null: a NaN stops it."
    )

    @field_validator("max_runtime")
    @classmethod
    def _positive_runtime(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be positive")
        return value


def divergence_problems(spec: Spec) -> list[Problem]:
    """training.divergence against training.devices."""
    divergence = spec.training.divergence
    if divergence is not None and spec.training.devices != 1:
        # Each process sees its own shard's loss: a rollback decided on one rank alone would desynchronize them.
        message = "the divergence guard runs in single-process jobs only (training.devices: 1)"
        return [(("training", "divergence"), message, divergence.model_dump(mode="json"))]
    return []


# --- the spec -------------------------------------------------------------------------------


class Spec(StrictModel):
    """One fine-tuning run."""

    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    data: DataSpec
    optimizer: Optimizer = Field(default_factory=SGDOptimizer)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    clipping: Clipping = Field(default_factory=ClipNone)
    scheduler: Scheduler = Field(default_factory=ConstantSchedule)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @property
    def image_size(self) -> int:
        """The input size in pixels, with 'native' resolved to the backbone's own."""
        if self.data.image_size == "native":
            return get_backbone(self.backbone.name).native_size
        return self.data.image_size

    def monitors(self) -> dict[str, MonitorMetric]:
        """Every metric the run watches, by the path of the field that names it."""
        found: dict[str, MonitorMetric] = {}
        if self.training.monitor is not None:
            found["training.monitor"] = self.training.monitor
        if self.regularization.early_stopping is not None:
            found["regularization.early_stopping.monitor"] = self.regularization.early_stopping.monitor
        if isinstance(self.scheduler, PlateauSchedule):
            found["scheduler.monitor"] = self.scheduler.monitor
        return found

    def _resolve_defaults(self) -> None:
        if self.training.monitor is None and self.data.val_split > 0:
            self.training.monitor = "val_acc"  # validation data there is: a held-out part of train/, or val/
        reg = self.regularization
        if reg.weight_decay_mode is None:
            reg.weight_decay_mode = "decoupled" if self.optimizer.name == "adamw" else "l2"

    def _rule_problems(self) -> list[Problem]:
        """The rules between sections, each checked beside the section whose field it reports."""
        return [problem for check in SECTION_RULES for problem in check(self)]


# The rules that span sections, in the order their problems are reported.
SECTION_RULES: tuple[Callable[[Spec], list[Problem]], ...] = (
    image_size_problems,
    scheduler_problems,
    freeze_problems,
    divergence_problems,
)

# The tags of each tagged union, by the field that holds it.
UNION_TAGS: dict[str, set[str]] = {
    "optimizer": set(variant_tags(OptimizerVariants)),
    "clipping": set(variant_tags(ClippingVariants)),
    "scheduler": set(variant_tags(SchedulerVariants)),
    "freeze": set(variant_tags(FreezeVariants)),
}


def error_path(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location as a dotted field path, union tags left out: ``scheduler.milestones``."""
    parts: list[str] = []
    for part in loc:
        if parts and part in UNION_TAGS.get(parts[-1], ()):
            continue  # pydantic names the chosen variant of a union: not a field
        parts.append(str(part))
    return ".".join(parts)


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: the field's path and the reason."""
    return [f"{error_path(e['loc']) or '(spec)'}: {error_message(e)}" for e in error.errors()]


def error_message(error: Any) -> str:
    """Pydantic's message without its 'Value error, ' prefix."""
    return str(error["msg"]).removeprefix("Value error, ")


def load_spec(source: str | Path | dict[str, Any]) -> Spec:
    """A validated spec from a YAML or JSON file, or from a mapping."""
    if isinstance(source, dict):
        return Spec.model_validate(source)
    raw = yaml.safe_load(Path(source).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a spec is a mapping of sections (backbone, data, ...), got {type(raw).__name__}")
    return Spec.model_validate(raw)


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of a spec, every model named in ``$defs``."""
    return Spec.model_json_schema()


def missing_split_problem(where: str, metric: MonitorMetric, splits: set[str]) -> str | None:
    """Why ``metric`` cannot be watched on data with only ``splits`` (of train, val, test), or None."""
    split = metric.split("_", 1)[0]
    if split == "val" and "val" not in splits:
        return (
            f"{where}: {metric} needs validation data and this run has none (data.val_split is 0 and the data "
            "has no val/); watch a train_ or test_ metric instead, or hold out part of train/ with data.val_split"
        )
    if split == "test" and "test" not in splits:
        return f"{where}: {metric} needs a test/ split and the data has none"
    return None
