"""Every ready-made spec in examples/ validates, and names a real backbone, schedule and clipping mode."""

from pathlib import Path

import pytest

from training.spec import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples_for_the_articles_levers():
    names = {p.stem for p in EXAMPLES}
    assert {"vgg16-step-decay-value-clipping", "resnet50-cosine-weight-decay", "mobilenet-plateau"} <= names
    assert {"vit-warmup-agc", "linear-probe", "gradual-unfreezing", "cifar10-resnet18"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path):
    spec = load_spec(path)
    assert spec.data.path is not None and spec.data.path.endswith("cifar10-jpg.tar.gz")


def test_the_examples_use_what_their_names_say():
    by_name = {p.stem: load_spec(p) for p in EXAMPLES}
    vgg = by_name["vgg16-step-decay-value-clipping"]
    assert vgg.scheduler.name == "step" and vgg.clipping.mode == "value"
    assert by_name["resnet50-cosine-weight-decay"].scheduler.name == "cosine"
    assert by_name["mobilenet-plateau"].scheduler.name == "plateau"
    vit = by_name["vit-warmup-agc"]
    assert vit.clipping.mode == "agc" and vit.scheduler.warmup_epochs > 0
    assert by_name["linear-probe"].backbone.freeze.strategy == "linear_probe"
    assert by_name["gradual-unfreezing"].backbone.freeze.strategy == "gradual"
    guarded = by_name["high-lr-divergence-guard"].training.divergence
    assert guarded is not None and guarded.action == "rollback"
