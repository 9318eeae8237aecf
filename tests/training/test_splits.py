"""The split plan: the images a run trains on, counted from class counts alone and cut from the records."""

from __future__ import annotations

import pytest

from tests.training.images import make_tree
from training.imagefolder import scan_image_folder
from training.settings import EngineSettings
from training.spec import DataSpec
from training.splits import planned_train_images, split_records

COUNTS = {"a": 7, "b": 3, "c": 1, "d": 12}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    flat = make_tree(tmp_path_factory.mktemp("flat"), COUNTS)
    with_val = tmp_path_factory.mktemp("with_val")
    make_tree(with_val / "train", COUNTS)
    make_tree(with_val / "val", dict.fromkeys(COUNTS, 2))
    return {"flat": flat, "with_val": with_val}


@pytest.mark.parametrize("layout", ["flat", "with_val"])
@pytest.mark.parametrize("val_split", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("subset", [None, 1, 2, 5])
def test_the_service_counts_the_training_images_the_engine_cuts(trees, tmp_path, layout, val_split, subset):
    root = trees[layout]
    data = DataSpec(path=str(root), val_split=val_split, subset_per_class=subset)
    scanned = scan_image_folder(root)
    counts = [sum(r.label == label for r in scanned.train) for label in range(len(scanned.class_names))]

    _, train, val = split_records(data, source=root, work_dir=tmp_path, seed=3, settings=EngineSettings())

    assert planned_train_images(counts, data, has_val=scanned.val is not None) == len(train)
    if layout == "with_val":
        assert val == scanned.val
    elif val_split == 0:
        assert val is None
    else:
        assert val is not None and not set(val) & set(train)
        used = [min(n, subset) if subset is not None else n for n in counts]
        assert len(train) + len(val) == sum(used)
