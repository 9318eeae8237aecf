"""Every torchvision classifier, built with a new head and a map of its stages.

A closed registry of families: each says where the family keeps its classifier, how its layers
group into stages (stem first, for freezing and layer-wise learning rates), and which builder
arguments set its dropout, stochastic depth and input size. Pretrained weights come through
torchvision's weights enums and its cache under ``$TORCH_HOME``; weights missing from the cache are
downloaded as torchvision does, unless the operator turned downloads off (``FT_ALLOW_WEIGHT_DOWNLOADS``),
and a failed download is a ``weights_unavailable`` error naming the URL, the cache path and the cause.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.googlenet import GoogLeNetOutputs
from torchvision.models.inception import InceptionOutputs
from torchvision.models.vision_transformer import interpolate_embeddings

from training.catalog import BackboneInfo, WeightsInfo, check_weights_available, get_backbone
from training.errors import InitFromError, WeightsUnavailable
from training.settings import EngineSettings, engine_settings
from training.spec import BackboneSpec, HeadSpec

Stages = list[list[str]]  # parameter-name prefixes of each stage, stem first

# Inception v3's auxiliary classifier only fits inputs of at least this size.
INCEPTION_AUX_MIN_SIZE = 299


def _children_with_params(model: nn.Module, prefix: str) -> list[str]:
    """Dotted names of the children of ``model.<prefix>`` that hold parameters."""
    module = model.get_submodule(prefix) if prefix else model
    return [
        f"{prefix}.{name}" if prefix else name
        for name, child in module.named_children()
        if any(True for _ in child.parameters())
    ]


def _split_at_pools(model: nn.Module, prefix: str) -> Stages:
    """Stages of a plain conv stack (AlexNet, VGG, SqueezeNet): each ends at a max-pool."""
    stages: Stages = [[]]
    for name, layer in model.get_submodule(prefix).named_children():
        if any(True for _ in layer.parameters()):
            stages[-1].append(f"{prefix}.{name}")
        if isinstance(layer, nn.MaxPool2d) and stages[-1]:
            stages.append([])
    return [stage for stage in stages if stage]


def _group(names: list[str], sizes: list[int]) -> Stages:
    """Consecutive groups of ``names`` of the given sizes; the last group takes the rest."""
    stages, start = [], 0
    for size in sizes:
        stages.append(names[start : start + size])
        start += size
    stages[-1].extend(names[start:])
    return stages


def _vgg_like_stages(model: nn.Module) -> Stages:
    stages = _split_at_pools(model, "features")
    hidden = _children_with_params(model, "classifier")[:-1]  # the pretrained fully connected layers
    return [*stages, hidden] if hidden else stages


def _resnet_stages(model: nn.Module) -> Stages:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def _regnet_stages(model: nn.Module) -> Stages:
    return [["stem"], *([name] for name in _children_with_params(model, "trunk_output"))]


def _shufflenet_stages(model: nn.Module) -> Stages:
    return [["conv1"], ["stage2"], ["stage3"], ["stage4"], ["conv5"]]


def _densenet_stages(model: nn.Module) -> Stages:
    stages: Stages = [[]]
    for name in _children_with_params(model, "features"):
        if name.startswith("features.denseblock"):
            stages.append([])
        stages[-1].append(name)
    return stages


def _googlenet_stages(model: nn.Module) -> Stages:
    return [
        ["conv1", "conv2", "conv3"],
        ["inception3a", "inception3b"],
        ["inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "aux1", "aux2"],
        ["inception5a", "inception5b"],
    ]


def _inception_stages(model: nn.Module) -> Stages:
    names = _children_with_params(model, "")
    return [
        [n for n in names if n.startswith("Conv2d_")],
        [n for n in names if n.startswith("Mixed_5")],
        [n for n in names if n.startswith("Mixed_6") or n == "AuxLogits"],
        [n for n in names if n.startswith("Mixed_7")],
    ]


def _features_stages(model: nn.Module) -> Stages:
    """One stage per child of ``features`` (MobileNet, EfficientNet)."""
    return [[name] for name in _children_with_params(model, "features")]


def _mobilenet_v3_stages(model: nn.Module) -> Stages:
    stages = _features_stages(model)
    stages[-1].append("classifier.0")  # the pretrained 960->1280 projection before the classifier
    return stages


def _mnasnet_stages(model: nn.Module) -> Stages:
    names = _children_with_params(model, "layers")
    # layers 0-7 are the stem (three convs with their norms), 8-13 the six blocks, 14-16 the head conv.
    stem = [n for n in names if int(n.split(".")[1]) <= 7]
    blocks = [[n] for n in names if 8 <= int(n.split(".")[1]) <= 13]
    tail = [n for n in names if int(n.split(".")[1]) >= 14]
    return [stem, *blocks, tail]


def _convnext_stages(model: nn.Module) -> Stages:
    stages = _group(_children_with_params(model, "features"), [2, 2, 2, 2])
    stages[-1].append("classifier.0")  # the final LayerNorm2d
    return stages


def _swin_stages(model: nn.Module) -> Stages:
    stages = _group(_children_with_params(model, "features"), [2, 2, 2, 2])
    stages[-1].append("norm")
    return stages


def _vit_stages(model: nn.Module) -> Stages:
    blocks = [[name] for name in _children_with_params(model, "encoder.layers")]
    blocks[-1].append("encoder.ln")
    return [["conv_proj", "class_token", "encoder.pos_embedding"], *blocks]


def _maxvit_stages(model: nn.Module) -> Stages:
    blocks = [[name] for name in _children_with_params(model, "blocks")]
    blocks[-1].extend(["classifier.2", "classifier.3"])  # the pretrained LayerNorm and pre-logits layer
    return [["stem"], *blocks]


def _googlenet_kwargs(image_size: int, pretrained: bool) -> dict[str, Any]:
    return {"aux_logits": True, "transform_input": pretrained, **({} if pretrained else {"init_weights": True})}


def _inception_kwargs(image_size: int, pretrained: bool) -> dict[str, Any]:
    aux = image_size >= INCEPTION_AUX_MIN_SIZE
    return {"aux_logits": aux, "transform_input": pretrained, **({} if pretrained else {"init_weights": True})}


def _vit_resize_state(model: nn.Module, image_size: int, state: dict[str, Any]) -> dict[str, Any]:
    resized: dict[str, Any] = interpolate_embeddings(image_size, model.patch_size, state)
    return resized


def _vit_sizes(name: str) -> tuple[int, int]:
    with empty_weights():
        patch: int = torchvision.models.get_model(name).patch_size
    return patch, patch


def _maxvit_sizes(name: str) -> tuple[int, int]:
    return 224, 224  # every stage's grid must divide by the partition size 7: input / 32 % 7 == 0


@dataclass(frozen=True)
class Family:
    """What the models of one torchvision family share."""

    name: str
    prefixes: tuple[str, ...]  # model names that belong to the family start with one of these
    head: str  # dotted path of the classification layer that the new head replaces
    stages: Callable[[nn.Module], Stages]
    aux_heads: tuple[str, ...] = ()  # auxiliary classifiers (GoogLeNet, Inception v3), replaced too
    aux_loss_weight: float = 0.0  # weight of each auxiliary loss, as in the papers
    dropout_kwarg: str | None = None
    stochastic_depth_kwarg: str | None = None
    size_kwarg: str | None = None  # builder argument that fixes the input size
    # Builder arguments for an input size and whether the weights are pretrained (input size, aux heads...).
    builder_kwargs: Callable[[int, bool], dict[str, Any]] = lambda image_size, pretrained: {}
    # Builder arguments of the catalog's size search: Inception v3 trains below 299 px without its aux head.
    catalog_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # The pretrained state dict for another input size (ViT: position embeddings interpolated); None: as it is.
    resize_state: Callable[[nn.Module, int, dict[str, Any]], dict[str, Any]] | None = None
    # (smallest input, size multiple) known without the search: ViT's patch, MaxViT's partition grid.
    fixed_sizes: Callable[[str], tuple[int, int]] | None = None
    convolutional: bool = True  # channels_last pays off ("auto" turns it on, on CUDA)


FAMILIES: tuple[Family, ...] = (
    Family("alexnet", ("alexnet",), "classifier.6", _vgg_like_stages, dropout_kwarg="dropout"),
    Family("vgg", ("vgg",), "classifier.6", _vgg_like_stages, dropout_kwarg="dropout"),
    Family("resnet", ("resnet", "resnext", "wide_resnet"), "fc", _resnet_stages),
    Family("regnet", ("regnet",), "fc", _regnet_stages),
    Family("shufflenet_v2", ("shufflenet_v2",), "fc", _shufflenet_stages),
    Family("densenet", ("densenet",), "classifier", _densenet_stages, dropout_kwarg="drop_rate"),
    Family(
        "googlenet",
        ("googlenet",),
        "fc",
        _googlenet_stages,
        aux_heads=("aux1.fc2", "aux2.fc2"),
        aux_loss_weight=0.3,
        dropout_kwarg="dropout",
        builder_kwargs=_googlenet_kwargs,
    ),
    Family(
        "inception",
        ("inception",),
        "fc",
        _inception_stages,
        aux_heads=("AuxLogits.fc",),
        aux_loss_weight=0.4,
        dropout_kwarg="dropout",
        builder_kwargs=_inception_kwargs,
        catalog_kwargs={"aux_logits": False},
    ),
    Family("mobilenet_v2", ("mobilenet_v2",), "classifier.1", _features_stages, dropout_kwarg="dropout"),
    Family("mobilenet_v3", ("mobilenet_v3",), "classifier.3", _mobilenet_v3_stages, dropout_kwarg="dropout"),
    Family("mnasnet", ("mnasnet",), "classifier.1", _mnasnet_stages, dropout_kwarg="dropout"),
    Family(
        "efficientnet",
        ("efficientnet",),
        "classifier.1",
        _features_stages,
        dropout_kwarg="dropout",
        stochastic_depth_kwarg="stochastic_depth_prob",
    ),
    Family("squeezenet", ("squeezenet",), "classifier.1", _vgg_like_stages, dropout_kwarg="dropout"),
    Family(
        "convnext",
        ("convnext",),
        "classifier.2",
        _convnext_stages,
        stochastic_depth_kwarg="stochastic_depth_prob",
    ),
    Family(
        "vit",
        ("vit_",),
        "heads.head",
        _vit_stages,
        dropout_kwarg="dropout",
        size_kwarg="image_size",
        builder_kwargs=lambda image_size, pretrained: {"image_size": image_size},
        resize_state=_vit_resize_state,
        fixed_sizes=_vit_sizes,
        convolutional=False,
    ),
    Family(
        "swin",
        ("swin_",),
        "head",
        _swin_stages,
        dropout_kwarg="dropout",
        stochastic_depth_kwarg="stochastic_depth_prob",
        convolutional=False,
    ),
    # MaxViT's builder fixes stochastic_depth_prob itself, so it takes none from us.
    Family(
        "maxvit",
        ("maxvit",),
        "classifier.5",
        _maxvit_stages,
        size_kwarg="input_size",
        builder_kwargs=lambda image_size, pretrained: {"input_size": (image_size, image_size)},
        fixed_sizes=_maxvit_sizes,
    ),
)


def family_of(name: str) -> Family:
    for family in FAMILIES:
        if name.startswith(family.prefixes):
            return family
    raise KeyError(f"no backbone family for {name!r}")


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with their parameters on the meta device: the shapes without the memory or the init."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            param = module._parameters[name]
            assert param is not None
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.Sequential | nn.ModuleList) and name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


def make_head(old: nn.Module, num_classes: int, head: HeadSpec) -> nn.Module:
    """A new classifier in place of ``old``: one layer like torchvision's, or dropout and hidden layers."""
    conv = isinstance(old, nn.Conv2d)  # SqueezeNet classifies with a 1x1 convolution
    if not isinstance(old, nn.Linear | nn.Conv2d):
        raise TypeError(f"cannot replace a {type(old).__name__} head")
    in_features = old.in_channels if isinstance(old, nn.Conv2d) else old.in_features

    def layer(a: int, b: int) -> nn.Module:
        return nn.Conv2d(a, b, kernel_size=1) if conv else nn.Linear(a, b)

    if head.is_plain:
        return layer(in_features, num_classes)
    layers: list[nn.Module] = []
    widths = [in_features, *head.hidden]
    for a, b in itertools.pairwise(widths):
        if head.dropout:
            layers.append(nn.Dropout(head.dropout))
        layers += [layer(a, b), nn.GELU() if head.activation == "gelu" else nn.ReLU(inplace=True)]
    if head.dropout:
        layers.append(nn.Dropout(head.dropout))
    layers.append(layer(widths[-1], num_classes))
    return nn.Sequential(*layers)


def describe_head(head_module: nn.Module) -> list[dict[str, Any]]:
    """The layers of a head, for the model card: enough to rebuild it without this project."""
    layers = list(head_module) if isinstance(head_module, nn.Sequential) else [head_module]
    described: list[dict[str, Any]] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            described.append({"type": "linear", "in": layer.in_features, "out": layer.out_features})
        elif isinstance(layer, nn.Conv2d):
            described.append({"type": "conv1x1", "in": layer.in_channels, "out": layer.out_channels})
        elif isinstance(layer, nn.Dropout):
            described.append({"type": "dropout", "p": layer.p})
        elif isinstance(layer, nn.ReLU | nn.GELU):
            described.append({"type": type(layer).__name__.lower()})
        else:
            raise TypeError(f"unexpected head layer {type(layer).__name__}")
    return described


def build_head_from_description(layers: list[dict[str, Any]]) -> nn.Module:
    """The inverse of ``describe_head``."""
    modules: list[nn.Module] = []
    for layer in layers:
        kind = layer["type"]
        if kind == "linear":
            modules.append(nn.Linear(layer["in"], layer["out"]))
        elif kind == "conv1x1":
            modules.append(nn.Conv2d(layer["in"], layer["out"], kernel_size=1))
        elif kind == "dropout":
            modules.append(nn.Dropout(layer["p"]))
        elif kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        elif kind == "gelu":
            modules.append(nn.GELU())
        else:
            raise ValueError(f"unknown head layer type {kind!r}")
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


@dataclass
class BuiltModel:
    """A backbone with its new head, and what the engine needs to know about its parts."""

    model: nn.Module
    info: BackboneInfo
    family: Family
    num_classes: int
    stages: Stages
    head_paths: tuple[str, ...]  # the new head and the new auxiliary heads
    torchvision_kwargs: dict[str, Any]  # torchvision.models.get_model(name, **these) rebuilds the architecture
    weights: WeightsInfo | None
    notes: list[str] = field(default_factory=list)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_of(self, param_name: str) -> int:
        """0 for the stem ... num_stages - 1 for the last stage; num_stages for the new head."""
        if any(_under(param_name, path) for path in self.head_paths):
            return self.num_stages
        for index, prefixes in enumerate(self.stages):
            if any(_under(param_name, prefix) for prefix in prefixes):
                return index
        raise KeyError(f"parameter {param_name} is in no stage of {self.info.name}")

    def stage_modules(self, index: int) -> list[nn.Module]:
        """The modules of stage ``index`` (num_stages: the head)."""
        paths = self.head_paths if index == self.num_stages else self.stages[index]
        modules = []
        for path in paths:
            try:
                modules.append(self.model.get_submodule(path))
            except AttributeError:
                continue  # a bare parameter (ViT's class token), not a module
        return modules

    def split_outputs(self, outputs: Any) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
        """The logits, and the auxiliary logits with their loss weights (GoogLeNet, Inception v3 in training)."""
        if isinstance(outputs, GoogLeNetOutputs):
            aux = [a for a in (outputs.aux_logits1, outputs.aux_logits2) if a is not None]
            return outputs.logits, [(self.family.aux_loss_weight, a) for a in aux]
        if isinstance(outputs, InceptionOutputs):
            aux = [outputs.aux_logits] if outputs.aux_logits is not None else []
            return outputs.logits, [(self.family.aux_loss_weight, a) for a in aux]
        return outputs, []


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _builder_kwargs(spec: BackboneSpec, info: BackboneInfo, family: Family, image_size: int) -> dict[str, Any]:
    pretrained = spec.weights is not None
    kwargs: dict[str, Any] = {}
    if spec.dropout is not None and info.dropout_kwarg:
        kwargs[info.dropout_kwarg] = spec.dropout
    if spec.stochastic_depth is not None and info.stochastic_depth_kwarg:
        kwargs[info.stochastic_depth_kwarg] = spec.stochastic_depth
    return {**kwargs, **family.builder_kwargs(image_size, pretrained)}


def _weights_enum(name: str, weights: str) -> torchvision.models.WeightsEnum:
    enum = torchvision.models.get_model_weights(name)
    chosen: torchvision.models.WeightsEnum = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    return chosen


def fetch_weights(info: WeightsInfo, settings: EngineSettings) -> Path:
    """The weights' file in torchvision's cache, downloaded first when missing and downloads are allowed.

    Offline, or with downloads off, this fails fast with a ``WeightsUnavailable`` a person can act on,
    never a hang and never a urllib traceback.
    """
    path = check_weights_available(info, settings.allow_weight_downloads)
    if path.is_file():
        return path
    hash_prefix = _HASH_IN_NAME.search(info.file_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file and moved into place: an interrupted download leaves no partial file.
        with _socket_timeout(DOWNLOAD_STALL_SECONDS):  # torch.hub sets none: a black-holed network would hang
            torch.hub.download_url_to_file(
                info.url,
                str(path),
                hash_prefix=hash_prefix.group(1) if hash_prefix else None,
                progress=sys.stderr.isatty(),
            )
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError; a bad hash a RuntimeError
        raise WeightsUnavailable(
            f"could not download pretrained weights {info.name} from {info.url} to {path}: {_cause(error)} "
            "(offline: copy the file there from a machine that has it, or train from scratch with weights: null)"
        ) from None
    return path


DOWNLOAD_STALL_SECONDS = 60.0  # a connect or a read that waits this long fails the download


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torchvision's file names end in -<sha256 prefix>.pth


def _cause(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket error
    cause = reason if isinstance(reason, BaseException) else error
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0]


def _pretrained_model(
    name: str, info: WeightsInfo, family: Family, kwargs: dict[str, Any], image_size: int
) -> nn.Module:
    enum = _weights_enum(name, info.name)
    if family.size_kwarg and image_size != info.image_size:
        # Weights made for another input size: build at ours and load them, ViT's position embeddings resized.
        model = torchvision.models.get_model(name, num_classes=len(enum.meta["categories"]), **kwargs)
        state = enum.get_state_dict(progress=False, check_hash=True)
        if family.resize_state is not None:
            state = family.resize_state(model, image_size, state)
        model.load_state_dict(state)
        loaded: nn.Module = model
        return loaded
    kwargs = {k: v for k, v in kwargs.items() if k != family.size_kwarg}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*auxiliary heads in the pretrained googlenet.*")
        pretrained: nn.Module = torchvision.models.get_model(name, weights=enum, **kwargs)
        return pretrained


def build_model(
    spec: BackboneSpec,
    num_classes: int,
    image_size: int,
    *,
    settings: EngineSettings | None = None,
    empty: bool = False,
    init_from: Path | None = None,
) -> BuiltModel:
    """The backbone with a new head of ``num_classes``, its weights as the spec says.

    ``empty``: parameters on the meta device and no weights read (dry runs, parameter counts).
    ``init_from``: the local file of ``spec.init_from`` when that names something else (a job over the API).
    """
    settings = settings or engine_settings()
    info = get_backbone(spec.name)
    family = family_of(spec.name)
    kwargs = _builder_kwargs(spec, info, family, image_size)
    weights = info.find_weights(spec.weights) if spec.weights else None
    context = empty_weights() if empty else contextlib.nullcontext()
    with context:
        if weights is not None and not empty:
            fetch_weights(weights, settings)
            model = _pretrained_model(spec.name, weights, family, kwargs, image_size)
        else:
            model = torchvision.models.get_model(spec.name, num_classes=num_classes, **kwargs)
        head_paths = (family.head, *(p for p in family.aux_heads if _has_module(model, p)))
        fresh = weights is not None and not empty  # the pretrained heads have 1000 classes
        if fresh or not spec.head.is_plain:
            set_submodule(model, family.head, make_head(model.get_submodule(family.head), num_classes, spec.head))
        if fresh:
            for path in head_paths[1:]:
                set_submodule(model, path, make_head(model.get_submodule(path), num_classes, HeadSpec()))
    built = BuiltModel(
        model=model,
        info=info,
        family=family,
        num_classes=num_classes,
        stages=family.stages(model),
        head_paths=head_paths,
        torchvision_kwargs=_rebuild_kwargs(num_classes, kwargs),
        weights=weights,
    )
    if spec.init_from is not None and not empty:
        built.notes += load_init_from(built, init_from or Path(spec.init_from))
    return built


def _rebuild_kwargs(num_classes: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of get_model that rebuild this architecture to load published weights into."""
    rebuild = {"num_classes": num_classes, **kwargs}
    if "init_weights" in rebuild:
        rebuild["init_weights"] = False  # the weights are loaded right after: skip the slow init
    return rebuild


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        return isinstance(model.get_submodule(path), nn.Module)
    except AttributeError:
        return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a torch file read with ``weights_only=True``.

    A training checkpoint of this engine (a dict with a ``model`` entry) gives its model weights.
    """
    if not path.is_file():
        raise InitFromError(f"backbone.init_from: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(str(path)))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable files come in many shapes; say which file and why
        raise InitFromError(f"backbone.init_from: cannot read {path.name}: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InitFromError(f"backbone.init_from: {path.name} holds no state dict of tensors")
    return dict(loaded)


def load_init_from(built: BuiltModel, path: Path) -> list[str]:
    """Load a state dict into the model; the head only where its shape fits. Returns notes for the log."""
    state = read_state_dict(path)
    own = built.model.state_dict()
    in_head = [k for k in own if any(_under(k, p) for p in built.head_paths)]
    missing = [k for k in own if k not in state and k not in in_head]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in in_head and state[k].shape != own[k].shape
    ]
    unexpected = [k for k in state if k not in own]
    if missing or mismatched or unexpected:
        parts = []
        if mismatched:
            parts.append(f"shapes differ for {', '.join(mismatched[:3])}")
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        raise InitFromError(
            f"backbone.init_from: {path.name} does not fit {built.info.name}: {'; '.join(parts)}"
            + (" (and more)" if len(mismatched) + len(missing) + len(unexpected) > 3 else "")
        )
    head_fits = all(k in state and state[k].shape == own[k].shape for k in in_head)
    loadable = {k: v for k, v in state.items() if head_fits or k not in in_head}
    built.model.load_state_dict(loadable, strict=head_fits)
    if head_fits:
        return [f"started from {path.name}, head included"]
    return [f"started from {path.name}; its head does not fit {built.num_classes} classes and starts fresh"]


# --- the catalog, generated from torchvision ------------------------------------------------


def _measure_min_size(name: str, family: Family) -> tuple[int, int]:
    """(smallest input, size multiple) that a freshly built model trains on, found on the meta device."""
    if family.fixed_sizes is not None:
        return family.fixed_sizes(name)
    with empty_weights():
        model = torchvision.models.get_model(name, num_classes=10, **family.catalog_kwargs)
    model = model.to("meta").train()
    for size in range(1, 512):
        try:
            model(torch.empty(2, 3, size, size, device="meta"))
        except (RuntimeError, ValueError, IndexError):
            continue
        return size, 1
    raise RuntimeError(f"{name} accepts no input size up to 512")


def build_catalog(*, measure_sizes: bool = True) -> dict[str, Any]:
    """The catalog of every classification model torchvision lists (written to catalog.json).

    ``measure_sizes=False`` skips the (minute-long) search for each model's smallest input.
    """
    entries = []
    for name in torchvision.models.list_models(module=torchvision.models):
        family = family_of(name)
        enum = torchvision.models.get_model_weights(name)
        weights = [_weights_entry(w) for w in enum]
        default = enum.DEFAULT
        with empty_weights():
            model = torchvision.models.get_model(name, num_classes=1000)
        min_size, multiple = _measure_min_size(name, family) if measure_sizes else (0, 0)
        entries.append(
            {
                "name": name,
                "family": family.name,
                "num_params": sum(p.numel() for p in model.parameters()),
                "native_size": weights[[w.name for w in enum].index(default.name)]["image_size"],
                "min_size": min_size,
                "size_multiple": multiple,
                "num_stages": len(family.stages(model)),
                "default_weights": default.name,
                "weights": weights,
                "dropout_kwarg": family.dropout_kwarg,
                "stochastic_depth_kwarg": family.stochastic_depth_kwarg,
            }
        )
    return {"torchvision": torchvision.__version__.split("+")[0], "backbones": entries}


def _weights_entry(weights: torchvision.models.WeightsEnum) -> dict[str, Any]:
    transforms = weights.transforms()
    metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return {
        "name": weights.name,
        "url": weights.url,
        "num_params": weights.meta["num_params"],
        "image_size": transforms.crop_size[0],
        "resize_size": transforms.resize_size[0],
        "mean": list(transforms.mean),
        "std": list(transforms.std),
        "imagenet_acc1": metrics.get("acc@1"),
    }
