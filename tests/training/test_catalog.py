"""The torch-free catalog agrees with torchvision and the backbone registry."""

import pytest
import torchvision

from training.backbones import build_catalog
from training.catalog import closest_names, describe, get_backbone, load_catalog, weights_cache_path


def test_catalog_lists_every_torchvision_classifier():
    assert sorted(load_catalog()) == sorted(torchvision.models.list_models(module=torchvision.models))


def test_catalog_json_is_in_sync_with_torchvision():
    """Regenerate with `python -m training.catalog` when torchvision changes."""
    fresh = {entry["name"]: entry for entry in build_catalog(measure_sizes=False)["backbones"]}
    for name, info in load_catalog().items():
        entry = fresh[name]
        assert info.family == entry["family"]
        assert info.num_params == entry["num_params"]
        assert info.native_size == entry["native_size"]
        assert info.num_stages == entry["num_stages"], name
        assert info.default_weights == entry["default_weights"]
        assert [w.name for w in info.weights] == [w["name"] for w in entry["weights"]]
        assert [w.url for w in info.weights] == [w["url"] for w in entry["weights"]]


def test_unknown_names_get_the_closest_valid_ones():
    assert closest_names("resnet5O")[0] == "resnet50"
    assert "efficientnet_b0" in closest_names("efficientnetb0")
    with pytest.raises(KeyError, match="did you mean"):
        get_backbone("resnt18")


def test_describe_reports_the_cache_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    info = get_backbone("resnet50")
    assert [w["cached"] for w in describe(info)["weights"]] == [False, False]
    path = weights_cache_path(info.find_weights("IMAGENET1K_V2"))
    assert path == tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    cached = {w["name"]: w["cached"] for w in describe(info)["weights"]}
    assert cached == {"IMAGENET1K_V1": False, "IMAGENET1K_V2": True}
    assert describe(info)["default_weights"] == "IMAGENET1K_V2"
