"""Backbones: every torchvision classifier builds with a new head, trains, and exports loadable weights."""

import socket

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from training.backbones import FAMILIES, build_model, empty_weights, family_of, load_init_from
from training.catalog import backbone_names, get_backbone, weights_cache_path
from training.errors import InitFromError, WeightsUnavailable
from training.settings import EngineSettings
from training.spec import BackboneSpec, HeadSpec

ALL = backbone_names()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_backbone_trains_at_its_minimum_size_with_a_new_head(name):
    info = get_backbone(name)
    torch.manual_seed(0)
    built = build_model(BackboneSpec(name=name), num_classes=3, image_size=info.min_size)
    model = built.model.train()
    logits, aux = built.split_outputs(model(torch.randn(2, 3, info.min_size, info.min_size)))
    assert logits.shape == (2, 3)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    for weight, aux_logits in aux:
        assert aux_logits.shape == (2, 3)
        loss = loss + weight * nn.functional.cross_entropy(aux_logits, torch.tensor([0, 2]))
    loss.backward()
    head = model.get_submodule(built.family.head)
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    # Every parameter belongs to exactly one stage or the head, and the catalog counts the stages right.
    assert built.num_stages == info.num_stages
    for param_name, _ in model.named_parameters():
        built.stage_of(param_name)
    if info.min_size > 1 and info.size_multiple == 1:  # and the minimum is the minimum
        with pytest.raises((RuntimeError, ValueError, IndexError)):
            model(torch.randn(2, 3, info.min_size - 1, info.min_size - 1))


@pytest.mark.parametrize("name", ALL)
def test_plain_head_weights_fit_torchvision_get_model_strictly(name):
    """The exported state dict has exactly the keys and shapes of get_model(name, **torchvision_kwargs)."""
    info = get_backbone(name)
    size = max(info.min_size, info.native_size if info.size_multiple > 1 else 32)
    built = build_model(BackboneSpec(name=name), num_classes=7, image_size=size, empty=True)
    with empty_weights():
        reference = torchvision.models.get_model(name, **built.torchvision_kwargs)
    ours = {k: tuple(v.shape) for k, v in built.model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert built.torchvision_kwargs["num_classes"] == 7


def test_head_is_placed_where_each_family_keeps_its_classifier():
    for family in FAMILIES:
        name = next(n for n in ALL if family_of(n) is family)
        built = build_model(
            BackboneSpec(name=name, head=HeadSpec(hidden=[16])), 5, get_backbone(name).min_size, empty=True
        )
        head = built.model.get_submodule(family.head)
        assert isinstance(head, nn.Sequential), name
        last = head[-1]
        assert (last.out_features if isinstance(last, nn.Linear) else last.out_channels) == 5


def test_custom_head_has_dropout_and_hidden_layers():
    spec = BackboneSpec(name="resnet18", head=HeadSpec(dropout=0.3, hidden=[64, 32], activation="gelu"))
    fc = build_model(spec, 4, 32).model.fc
    kinds = [type(m).__name__ for m in fc]
    assert kinds == ["Dropout", "Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert fc[1].in_features == 512 and fc[-1].out_features == 4 and fc[0].p == 0.3


def test_backbone_dropout_and_stochastic_depth_reach_the_builder():
    built = build_model(BackboneSpec(name="efficientnet_b0", dropout=0.45, stochastic_depth=0.05), 3, 32)
    assert built.model.classifier[0].p == 0.45
    depth = [m.p for m in built.model.modules() if type(m).__name__ == "StochasticDepth"]
    assert max(depth) <= 0.05 and max(depth) > 0
    vgg = build_model(BackboneSpec(name="vgg11", dropout=0.1), 3, 32, empty=True)
    assert [m.p for m in vgg.model.classifier if isinstance(m, nn.Dropout)] == [0.1, 0.1]


def test_resnet_stages_run_from_stem_to_last_block():
    built = build_model(BackboneSpec(name="resnet18"), 3, 32, empty=True)
    assert built.stages == [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    assert built.stage_of("conv1.weight") == 0
    assert built.stage_of("layer4.1.bn2.bias") == 4
    assert built.stage_of("fc.weight") == 5


def _fake_pretrained(name: str, weights: str, torch_home, monkeypatch) -> dict:
    """Write a state dict where torchvision's cache keeps ``weights``; return it."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    info = get_backbone(name).find_weights(weights)
    torch.manual_seed(123)
    state = torchvision.models.get_model(name, num_classes=1000).state_dict()
    path = weights_cache_path(info)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_pretrained_weights_load_from_the_torch_cache(tmp_path, monkeypatch):
    state = _fake_pretrained("resnet18", "IMAGENET1K_V1", tmp_path, monkeypatch)
    built = build_model(BackboneSpec(name="resnet18", weights="DEFAULT"), 6, 32, settings=EngineSettings())
    ours = built.model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(ours[key], value), key
    assert built.model.fc.out_features == 6
    assert built.weights.name == "IMAGENET1K_V1"


def test_missing_weights_with_downloads_off_fail_naming_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as caught:
        build_model(
            BackboneSpec(name="resnet18", weights="IMAGENET1K_V1"),
            3,
            32,
            settings=EngineSettings(allow_weight_downloads=False),
        )
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(caught.value)
    assert "FT_ALLOW_WEIGHT_DOWNLOADS" in str(caught.value)


def unreachable_network(monkeypatch) -> None:
    """Every HTTPS request goes through a proxy on a port nobody listens on: refused at once, no network used."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, closed)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_a_failed_download_names_the_url_the_cache_path_and_the_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    unreachable_network(monkeypatch)
    assert EngineSettings().allow_weight_downloads is None  # the engine alone downloads, as torchvision does
    with pytest.raises(WeightsUnavailable) as caught:
        build_model(BackboneSpec(name="resnet18", weights="DEFAULT"), 3, 32, settings=EngineSettings())
    message = str(caught.value)
    assert caught.value.code == "weights_unavailable"
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "refused" in message.lower()  # the cause, in a line: no urllib traceback
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # nothing half-written left in the cache


@pytest.mark.slow
def test_pretrained_googlenet_keeps_aux_heads_and_input_transform(tmp_path, monkeypatch):
    state = _fake_pretrained("googlenet", "IMAGENET1K_V1", tmp_path, monkeypatch)
    built = build_model(BackboneSpec(name="googlenet", weights="IMAGENET1K_V1"), 4, 32, settings=EngineSettings())
    assert built.model.transform_input and built.torchvision_kwargs["transform_input"] is True
    assert built.model.aux1.fc2.out_features == 4 and built.model.fc.out_features == 4
    assert torch.equal(
        built.model.state_dict()["inception5b.branch1.conv.weight"], state["inception5b.branch1.conv.weight"]
    )


@pytest.mark.slow
def test_pretrained_vit_at_another_size_interpolates_position_embeddings(tmp_path, monkeypatch):
    state = _fake_pretrained("vit_b_32", "IMAGENET1K_V1", tmp_path, monkeypatch)
    built = build_model(BackboneSpec(name="vit_b_32", weights="IMAGENET1K_V1"), 3, 64, settings=EngineSettings())
    pos = built.model.encoder.pos_embedding
    assert pos.shape == (1, (64 // 32) ** 2 + 1, 768)
    assert torch.equal(pos[0, 0], state["encoder.pos_embedding"][0, 0])  # the class token's is kept
    assert built.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_init_from_safetensors_loads_all_weights(tmp_path):
    source = build_model(BackboneSpec(name="resnet18"), 5, 32)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    built = build_model(BackboneSpec(name="resnet18", init_from=str(path)), 5, 32)
    for key, value in source.model.state_dict().items():
        assert torch.equal(built.model.state_dict()[key], value)
    assert "head included" in built.notes[0]


def test_init_from_with_another_class_count_keeps_a_fresh_head(tmp_path):
    source = build_model(BackboneSpec(name="resnet18"), 10, 32)
    path = tmp_path / "w.pt"
    torch.save(source.model.state_dict(), path)
    built = build_model(BackboneSpec(name="resnet18", init_from=str(path)), 4, 32)
    assert built.model.fc.out_features == 4
    assert torch.equal(built.model.layer1[0].conv1.weight, source.model.layer1[0].conv1.weight)
    assert "starts fresh" in built.notes[0]


def test_init_from_of_another_backbone_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build_model(BackboneSpec(name="resnet34"), 3, 32, empty=False).model.state_dict(), path)
    with pytest.raises(InitFromError, match="does not fit resnet18"):
        build_model(BackboneSpec(name="resnet18", init_from=str(path)), 3, 32)


def test_init_from_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "code": nn.Linear(2, 2)}, path)
    built = build_model(BackboneSpec(name="resnet18"), 3, 32)
    with pytest.raises(InitFromError, match=r"cannot read evil\.pt"):
        load_init_from(built, path)
