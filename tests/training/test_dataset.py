"""Data sets as uploaded: archives extracted safely, the ImageFolder layout, image checks, splits."""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.cifar import CIFAR10_CLASSES, make_cifar_subset
from tests.training.images import (
    add_tar_file,
    left_in,
    make_tar,
    make_tree,
    make_zip,
    png_bytes,
    records_of,
    write_image,
)
from training.archives import resolve_source, safe_extract
from training.dataset_check import validate_dataset
from training.decoding import check_images
from training.errors import DatasetError
from training.imagefolder import ImageRecord, scan_image_folder
from training.settings import EngineSettings
from training.splits import stratified_split, subset_per_class

SETTINGS = EngineSettings()

# --- archives -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_name", ["../evil.png", "train/../../evil.png", "/tmp/evil.png"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_entry_that_escapes_the_destination_is_refused(tmp_path, kind, bad_name):
    work = tmp_path / "work"
    work.mkdir()
    entries = {"train/cat/a.png": png_bytes(), bad_name: b"owned"}
    maker = make_zip if kind == "zip" else make_tar
    archive = maker(work / f"data.{kind}", entries)

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, work / "out", SETTINGS)

    assert caught.value.code == "dataset_invalid"
    assert bad_name in str(caught.value)
    assert left_in(work, archive) == []
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_link_in_a_tar_is_refused(tmp_path, link_type):
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_file(tar, "train/cat/a.png", png_bytes())
        link = tarfile.TarInfo("train/cat/b.png")
        link.type = link_type
        link.linkname = "/etc/passwd"
        tar.addfile(link)

    with pytest.raises(DatasetError, match=r"train/cat/b\.png is a link"):
        safe_extract(archive, tmp_path / "out", SETTINGS)
    assert left_in(tmp_path, archive) == []


def test_a_symlink_in_a_zip_is_refused(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("train/cat/link.png")
        link.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(link, "/etc/passwd")

    with pytest.raises(DatasetError, match=r"link\.png is a symbolic link"):
        safe_extract(archive, tmp_path / "out", SETTINGS)


def test_a_zip_bomb_entry_is_refused_and_nothing_is_left(tmp_path):
    archive = make_zip(
        tmp_path / "bomb.zip",
        {"train/cat/a.png": png_bytes(), "train/cat/zeros.bmp": bytes(4 * 1024 * 1024)},
    )

    with pytest.raises(DatasetError) as caught:
        safe_extract(archive, tmp_path / "out", EngineSettings(extract_max_ratio=10))

    assert caught.value.code == "dataset_invalid"
    assert "train/cat/zeros.bmp" in str(caught.value)
    assert "zip bomb" in str(caught.value)
    assert left_in(tmp_path, archive) == []


def test_the_size_limit_counts_the_bytes_written(tmp_path):
    noise = np.random.default_rng(0).bytes(700 * 1024)  # incompressible: the ratio limit stays out of it
    archive = make_tar(tmp_path / "big.tar.gz", {"train/cat/a.bin": noise, "train/cat/b.bin": noise})

    with pytest.raises(DatasetError, match="more than 1 MiB"):
        safe_extract(archive, tmp_path / "out", EngineSettings(extract_max_mb=1))
    assert left_in(tmp_path, archive) == []


def test_too_many_entries_are_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"train/cat/{i}.png": png_bytes(seed=i) for i in range(5)})

    with pytest.raises(DatasetError, match="more than 3 entries"):
        safe_extract(archive, tmp_path / "out", EngineSettings(extract_max_files=3))


def test_extraction_leaves_out_macos_and_hidden_files(tmp_path):
    archive = make_tar(
        tmp_path / "data.tgz",
        {
            "./train/cat/a.png": png_bytes(),
            "./train/cat/.DS_Store": b"x",
            "__MACOSX/train/cat/._a.png": b"x",
        },
    )

    out = safe_extract(archive, tmp_path / "out", SETTINGS)

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["train/cat/a.png"]
    assert (out / "train/cat/a.png").read_bytes() == png_bytes()


def test_a_file_that_is_not_an_archive_is_named(tmp_path):
    archive = tmp_path / "notes.zip"
    archive.write_text("just some text, not an archive")

    with pytest.raises(DatasetError, match=r"notes\.zip: not a zip or tar archive") as caught:
        safe_extract(archive, tmp_path / "out", SETTINGS)
    assert caught.value.code == "dataset_invalid"


def test_resolve_source_extracts_once_and_again_when_the_archive_changes(tmp_path):
    archive = make_zip(tmp_path / "pets.zip", {"cat/a.png": png_bytes(seed=1), "dog/a.png": png_bytes(seed=2)})
    work = tmp_path / "work"

    first = resolve_source(archive, work, SETTINGS)
    (first / "cat" / "mark.png").write_bytes(b"")  # proves the next call reuses this folder
    second = resolve_source(archive, work, SETTINGS)
    assert first == second == work / "pets"
    assert (second / "cat" / "mark.png").exists()

    os.utime(archive, ns=(1_000_000_000, 1_000_000_000))
    third = resolve_source(archive, work, SETTINGS)
    assert third == first
    assert not (third / "cat" / "mark.png").exists()
    assert (third / "dog" / "a.png").exists()


def test_resolve_source_uses_a_folder_as_it_is_and_names_a_missing_path(tmp_path):
    assert resolve_source(tmp_path, tmp_path / "work", SETTINGS) == tmp_path
    with pytest.raises(DatasetError, match=r"data\.path: .*nowhere does not exist"):
        resolve_source(tmp_path / "nowhere", tmp_path / "work", SETTINGS)


# --- layout -------------------------------------------------------------------------------------


def test_scan_finds_train_val_and_test_with_sorted_classes(tmp_path):
    make_tree(tmp_path / "train", {"dog": 2, "cat": 3})
    make_tree(tmp_path / "val", {"dog": 1, "cat": 1})
    make_tree(tmp_path / "test", {"dog": 1, "cat": 2})
    write_image(tmp_path / "train" / "cat" / "nested" / "deep.JPG", fmt="JPEG")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("about")

    layout = scan_image_folder(tmp_path)

    assert layout.root == tmp_path
    assert layout.class_names == ["cat", "dog"]
    train = [(r.path.relative_to(tmp_path).as_posix(), r.label) for r in layout.train]
    assert train == [
        ("train/cat/000.png", 0),
        ("train/cat/001.png", 0),
        ("train/cat/002.png", 0),
        ("train/cat/nested/deep.JPG", 0),
        ("train/dog/000.png", 1),
        ("train/dog/001.png", 1),
    ]
    assert layout.val is not None and [r.label for r in layout.val] == [0, 1]
    assert layout.test is not None and [r.label for r in layout.test] == [0, 0, 1]
    assert layout.skipped == ["README.md", "train/cat/notes.txt"]


def test_scan_reads_a_flat_layout_as_train_only(tmp_path):
    make_tree(tmp_path, {"cat": 2, "dog": 2})

    layout = scan_image_folder(tmp_path)

    assert layout.class_names == ["cat", "dog"]
    assert len(layout.train) == 4
    assert layout.val is None and layout.test is None


def test_scan_looks_through_a_wrapping_folder(tmp_path):
    make_tree(tmp_path / "cifar10" / "train", {"cat": 1, "dog": 1})
    make_tree(tmp_path / "cifar10" / "test", {"cat": 1, "dog": 1})

    layout = scan_image_folder(tmp_path)

    assert layout.root == tmp_path / "cifar10"
    assert layout.test is not None and len(layout.test) == 2


def test_a_single_class_is_refused(tmp_path):
    make_tree(tmp_path / "train", {"cat": 3})

    with pytest.raises(DatasetError, match=r"only one class folder \(train/cat/\).*at least two classes") as caught:
        scan_image_folder(tmp_path)
    assert caught.value.code == "dataset_invalid"


def test_an_empty_class_is_named(tmp_path):
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "readme.txt").write_text("no images here")

    with pytest.raises(DatasetError) as caught:
        scan_image_folder(tmp_path)
    assert caught.value.problems == ["class 'emu' has no images (train/emu/)"]


def test_val_classes_that_differ_from_train_are_named(tmp_path):
    make_tree(tmp_path / "train", {"cat": 1, "dog": 1, "emu": 1})
    make_tree(tmp_path / "val", {"cat": 1, "yak": 1})

    with pytest.raises(DatasetError) as caught:
        scan_image_folder(tmp_path)
    assert caught.value.problems == [
        "val/ is missing classes that train/ has: dog, emu",
        "val/ has classes that train/ does not: yak",
    ]


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")

    with pytest.raises(DatasetError, match="no class folders found"):
        scan_image_folder(tmp_path)


# --- image checks -------------------------------------------------------------------------------


def test_a_truncated_jpeg_is_reported_by_its_name(tmp_path):
    make_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    data = png_bytes(40, 40, fmt="JPEG")
    (tmp_path / "train" / "cat" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "train" / "dog" / "fake.png").write_text("this is text")
    records = scan_image_folder(tmp_path).train

    problems = check_images(records, SETTINGS, root=tmp_path)

    assert len(problems) == 2
    assert problems[0].startswith("train/cat/cut.jpg: truncated or corrupt")
    assert problems[1].startswith("train/dog/fake.png: cannot be opened as an image")
    # Headers only: the truncated JPEG still has a good header.
    assert [p.split(":")[0] for p in check_images(records, SETTINGS, decode=False, root=tmp_path)] == [
        "train/dog/fake.png"
    ]


def test_an_image_above_the_pixel_limit_is_named(tmp_path):
    make_tree(tmp_path, {"cat": 1, "dog": 1})
    write_image(tmp_path / "dog" / "big.png", 20, 10)

    problems = check_images(records_of(tmp_path), EngineSettings(image_max_pixels=150), root=tmp_path)

    assert problems == ["dog/big.png: 20x10 is 200 pixels, above the limit of 150 (FT_IMAGE_MAX_PIXELS)"]


def test_validate_dataset_reports_counts_and_skipped_files(tmp_path):
    source = tmp_path / "src"
    make_tree(source / "train", {"cat": 3, "dog": 2})
    make_tree(source / "test", {"cat": 1, "dog": 1})
    (source / "LICENSE").write_text("CC")
    archive = make_zip(
        tmp_path / "pets.zip",
        {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()},
    )

    report = validate_dataset(archive, tmp_path / "work", SETTINGS)

    assert report.to_dict() == {
        "class_names": ["cat", "dog"],
        "counts": {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 1}},
        "num_images": 7,
        "skipped": ["LICENSE"],
    }


def test_validate_dataset_lists_every_unreadable_file(tmp_path):
    make_tree(tmp_path / "train", {"cat": 2, "dog": 2})
    for name in ("cat/0.jpg", "dog/1.jpg"):
        (tmp_path / "train" / name).write_bytes(png_bytes(fmt="JPEG")[:40])

    with pytest.raises(DatasetError) as caught:
        validate_dataset(tmp_path, tmp_path / "work", SETTINGS)

    assert caught.value.code == "dataset_unreadable"
    assert [p.split(":")[0] for p in caught.value.problems] == ["train/cat/0.jpg", "train/dog/1.jpg"]


def test_dataset_error_message_shows_the_first_problems_and_counts_the_rest():
    error = DatasetError("dataset_unreadable", [f"f{i}.jpg: bad" for i in range(5)])
    assert str(error) == "f0.jpg: bad; f1.jpg: bad; f2.jpg: bad (and 2 more)"
    assert error.code == "dataset_unreadable"


# --- splits -------------------------------------------------------------------------------------


def fake_records(counts: list[int]) -> list[ImageRecord]:
    return [ImageRecord(Path(f"/d/{label}/{i:03d}.png"), label) for label, n in enumerate(counts) for i in range(n)]


def test_the_split_is_stratified_disjoint_and_seeded():
    records = fake_records([10, 20, 3, 2, 1])

    train, val = stratified_split(records, 0.2, seed=7)

    assert Counter(r.label for r in val) == {0: 2, 1: 4, 2: 1, 3: 1}  # at least one, never a whole class
    assert set(train).isdisjoint(val)
    assert sorted(train + val, key=str) == sorted(records, key=str)
    assert stratified_split(list(reversed(records)), 0.2, seed=7) == (train, val)
    assert stratified_split(records, 0.2, seed=8)[1] != val
    # A class's split does not depend on the other classes.
    alone_val = stratified_split([r for r in records if r.label == 1], 0.2, seed=7)[1]
    assert alone_val == [r for r in val if r.label == 1]


def test_subset_per_class_keeps_at_most_k_of_each_class():
    records = fake_records([10, 3])

    subset = subset_per_class(records, 4, seed=0)

    assert Counter(r.label for r in subset) == {0: 4, 1: 3}
    assert set(subset) <= set(records)
    assert subset == subset_per_class(records, 4, seed=0)
    assert subset != subset_per_class(records, 4, seed=1)
    assert subset == sorted(subset, key=lambda r: (r.label, str(r.path)))


# --- the real CIFAR-10 --------------------------------------------------------------------------


def test_validate_dataset_on_a_cifar10_subset(tmp_path):
    root = make_cifar_subset(tmp_path / "cifar", per_class=5, seed=0)

    report = validate_dataset(root, tmp_path / "work", SETTINGS)

    assert report.class_names == list(CIFAR10_CLASSES)
    assert report.counts == {split: dict.fromkeys(CIFAR10_CLASSES, 5) for split in ("train", "test")}
    assert report.num_images == 100
