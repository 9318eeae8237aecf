"""Data sets: archives, the ImageFolder layout, image checks, splits, and the batches the fit loop sees."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.cifar import CIFAR10_CLASSES, make_cifar_subset
from training.data import (
    DatasetError,
    ImageRecord,
    InMemoryImages,
    StreamingImages,
    channel_stats,
    check_images,
    decoded_bytes,
    load_data,
    normalize,
    resolve_source,
    safe_extract,
    scan_image_folder,
    stratified_split,
    subset_per_class,
    train_batches,
    validate_dataset,
)
from training.settings import EngineSettings
from training.spec import AugmentSpec, DataSpec

SETTINGS = EngineSettings()
CPU = torch.device("cpu")
NO_AUGMENT = AugmentSpec(hflip=False, random_crop=False)


# --- helpers ------------------------------------------------------------------------------------


def png_bytes(width: int = 8, height: int = 8, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, width: int = 8, height: int = 8, seed: int = 0, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(width, height, seed, fmt))
    return path


def make_tree(root: Path, counts: dict[str, int], size: int = 8, seed: int = 0) -> Path:
    """root/<class>/<i>.png for each class, with a distinct seeded image each."""
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            write_image(root / name / f"{i:03d}.png", size, size, seed=seed * 10_000 + c * 1000 + i)
    return root


def records_of(root: Path) -> list[ImageRecord]:
    return scan_image_folder(root).train


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in entries.items():
            add_tar_file(tar, name, data)
    return path


def left_in(folder: Path, archive: Path) -> list[str]:
    """What extraction left in ``folder`` besides the archive itself."""
    return sorted(p.name for p in folder.iterdir() if p != archive)


def batches_of(source, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in source.batches(epoch, start)]


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


# --- in-memory batches --------------------------------------------------------------------------


def test_images_are_resized_by_the_shorter_side_and_center_cropped(tmp_path):
    wide = np.zeros((12, 24, 3), dtype=np.uint8)
    wide[:, 6:18] = 255  # only the central 12 x 12 is white
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.zeros((16, 8, 3), dtype=np.uint8)
    tall[3:13] = 255  # at 1.5x, rows 4.5 to 19.5 of 24: white over the central 12 rows
    Image.fromarray(tall).save(tmp_path / "tall.png")
    records = [ImageRecord(tmp_path / "wide.png", 0), ImageRecord(tmp_path / "tall.png", 1)]

    data = InMemoryImages(records, 12, batch_size=8, train=False, augment=NO_AUGMENT, seed=0, device=CPU)

    assert data.images.shape == (2, 3, 12, 12) and data.images.dtype == torch.uint8
    assert bool((data.images[0] == 255).all())
    assert bool((data.images[1] == 255).all())


def test_batches_have_the_right_shapes_count_and_no_single_image_batch(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 5, "b": 4}))  # 9 images

    train = InMemoryImages(records, 8, batch_size=4, train=True, augment=AugmentSpec(), seed=0, device=CPU)
    evaluation = InMemoryImages(records, 8, batch_size=4, train=False, augment=AugmentSpec(), seed=0, device=CPU)

    assert train.num_images == 9
    assert len(train) == 2  # 4 + 4, the ninth image alone would be a batch of one
    assert [b[0].shape[0] for b in batches_of(train)] == [4, 4]
    images, labels = next(iter(train.batches(0)))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert len(evaluation) == 3
    eval_batches = batches_of(evaluation)
    assert [b[0].shape[0] for b in eval_batches] == [4, 4, 1]
    assert torch.cat([b[1] for b in eval_batches]).tolist() == [0] * 5 + [1] * 4
    assert torch.equal(torch.cat([b[0] for b in eval_batches]), evaluation.images)

    ten = InMemoryImages(records + records[:1], 8, batch_size=4, train=True, augment=AugmentSpec(), seed=0, device=CPU)
    assert [b[0].shape[0] for b in batches_of(ten)] == [4, 4, 2]


def test_a_short_last_training_batch_needs_half_a_batch():
    """A batch of a few images gives batch norm wild statistics and gradients (seen: norm 20000 vs 20)."""
    assert train_batches(450, 64) == 7  # 2 left over: dropped
    assert train_batches(480, 64) == 8  # 32 left over: half a batch, kept
    assert train_batches(30, 64) == 1  # smaller than a batch: one batch
    assert train_batches(1, 64) == 0


def test_each_epoch_is_a_seeded_permutation(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 6, "b": 6, "c": 6}))

    def labels(seed: int, epoch: int) -> list[int]:
        data = InMemoryImages(records, 8, batch_size=6, train=True, augment=NO_AUGMENT, seed=seed, device=CPU)
        return torch.cat([b[1] for b in batches_of(data, epoch)]).tolist()

    assert sorted(labels(0, 0)) == [0] * 6 + [1] * 6 + [2] * 6
    assert labels(0, 0) == labels(0, 0)
    assert labels(0, 0) != labels(0, 1)
    assert labels(0, 0) != labels(1, 0)


def test_augmentation_is_the_same_per_seed_epoch_batch_and_after_skipping(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 10, "b": 10}))

    def source(seed: int = 3) -> InMemoryImages:
        return InMemoryImages(records, 8, batch_size=4, train=True, augment=AugmentSpec(), seed=seed, device=CPU)

    full = batches_of(source(), epoch=2)
    again = batches_of(source(), epoch=2)
    tail = batches_of(source(), epoch=2, start=3)

    assert len(full) == 5 and len(tail) == 2
    for (x, y), (x2, y2) in zip(full, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(full[3:], tail, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other_epoch = batches_of(source(), epoch=3)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other_epoch, strict=True))


def padded_windows(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every S x S window of the reflect-padded image, computed by hand with F.pad."""
    size = image.shape[-1]
    padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0].to(torch.uint8)
    return [
        padded[:, top : top + size, left : left + size]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]


@pytest.mark.parametrize("hflip", [False, True])
def test_crop_with_padding_is_a_window_of_the_reflect_padded_image(tmp_path, hflip):
    records = records_of(make_tree(tmp_path, {"a": 8, "b": 8}, size=16))
    augment = AugmentSpec(hflip=hflip, random_crop=True, crop_padding=3)
    data = InMemoryImages(records, 16, batch_size=16, train=True, augment=augment, seed=0, device=CPU)
    ((images, _),) = batches_of(data)
    originals = {int(i): data.images[i] for i in range(16)}

    matched_windows = set()
    flipped = 0
    for out in images:
        found = None
        for index, original in originals.items():
            for w, window in enumerate(padded_windows(original, 3)):
                if torch.equal(out, window):
                    found = (index, w, False)
                elif hflip and torch.equal(out, window.flip(-1)):
                    found = (index, w, True)
        assert found is not None, "an output that is no window of any padded input"
        matched_windows.add(found[1])
        flipped += found[2]
    assert len(matched_windows) > 3  # the window is drawn per image
    if hflip:
        assert 0 < flipped < 16


def test_flip_mirrors_some_images_and_leaves_the_rest(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 16, "b": 16}))
    augment = AugmentSpec(hflip=True, random_crop=False)
    data = InMemoryImages(records, 8, batch_size=16, train=True, augment=augment, seed=0, device=CPU)
    plain = InMemoryImages(records, 8, batch_size=16, train=True, augment=NO_AUGMENT, seed=0, device=CPU)

    patterns = []
    for (flipped, labels), (originals, labels_plain) in zip(batches_of(data), batches_of(plain), strict=True):
        assert torch.equal(labels, labels_plain)
        same = [torch.equal(a, b) for a, b in zip(flipped, originals, strict=True)]
        mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, originals, strict=True)]
        assert all(s or m for s, m in zip(same, mirrored, strict=True))
        assert 0 < sum(mirrored) < 16
        patterns.append(mirrored)
    assert patterns[0] != patterns[1]  # each batch draws its own flips


def test_random_resized_crop_above_64_pixels_gives_square_images(tmp_path):
    records = []
    for i in range(3):
        gradient = np.tile(np.arange(80, dtype=np.uint8)[None, :, None] * 3, (80, 1, 3))
        Image.fromarray(gradient).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(tmp_path / f"{i}.png", i % 2))
    augment = AugmentSpec(hflip=False, min_crop_scale=0.35)
    data = InMemoryImages(records, 80, batch_size=3, train=True, augment=augment, seed=0, device=CPU)

    ((images, _),) = batches_of(data)

    assert images.shape == (3, 3, 80, 80) and images.dtype == torch.uint8
    assert not torch.equal(images, data.images)  # a crop zooms in: the gradient is stretched
    rows = images[:, 0].float()
    assert bool((rows[:, :, 1:] >= rows[:, :, :-1]).all())  # and neither flipped nor scrambled


def test_undecodable_files_are_all_named_together(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "000.png").write_bytes(b"garbage")
    (tmp_path / "b" / "001.png").write_bytes(png_bytes()[:30])

    with pytest.raises(DatasetError) as caught:
        InMemoryImages(
            records_of(tmp_path),
            8,
            batch_size=2,
            train=False,
            augment=NO_AUGMENT,
            seed=0,
            device=CPU,
            root=tmp_path,
        )
    assert caught.value.code == "dataset_unreadable"
    assert [p.split(":")[0] for p in caught.value.problems] == ["a/000.png", "b/001.png"]


# --- streaming ----------------------------------------------------------------------------------


def test_streaming_matches_in_memory_order_and_eval_pixels(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 5, "b": 6, "c": 4}))
    kwargs = {"batch_size": 4, "augment": AugmentSpec(), "seed": 5, "device": CPU}

    for epoch in (0, 1):
        memory = InMemoryImages(records, 8, train=True, **kwargs)
        stream = StreamingImages(records, 8, train=True, num_workers=0, **kwargs)
        assert len(stream) == len(memory) == 4
        assert [b[1].tolist() for b in batches_of(stream, epoch)] == [b[1].tolist() for b in batches_of(memory, epoch)]

    memory_eval = InMemoryImages(records, 8, train=False, **kwargs)
    stream_eval = StreamingImages(records, 8, train=False, num_workers=0, **kwargs)
    assert torch.equal(torch.cat([b[0] for b in batches_of(stream_eval)]), memory_eval.images)


def test_streaming_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 6, "b": 6}, size=12))
    kwargs = {
        "batch_size": 4,
        "train": True,
        "augment": AugmentSpec(crop_padding=2),
        "seed": 1,
        "device": CPU,
    }

    serial = batches_of(StreamingImages(records, 12, num_workers=0, **kwargs), epoch=1)
    parallel_source = StreamingImages(records, 12, num_workers=2, **kwargs)
    parallel = batches_of(parallel_source, epoch=1)
    tail = batches_of(parallel_source, epoch=1, start=1)

    assert len(serial) == len(parallel) == 3
    for (x, y), (x2, y2) in zip(serial, parallel, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, _), (x2, _) in zip(serial[1:], tail, strict=True):
        assert torch.equal(x, x2)
    assert not torch.equal(serial[0][0], batches_of(StreamingImages(records, 12, num_workers=0, **kwargs))[0][0])


def test_streaming_random_resized_crop_gives_square_images(tmp_path):
    records = [ImageRecord(write_image(tmp_path / f"{i}.png", 90, 70, seed=i), i % 2) for i in range(3)]
    source = StreamingImages(
        records, 72, batch_size=3, train=True, augment=AugmentSpec(), seed=0, device=CPU, num_workers=0
    )

    ((images, labels),) = batches_of(source)

    assert images.shape == (3, 3, 72, 72) and images.dtype == torch.uint8
    assert sorted(labels.tolist()) == [0, 0, 1]


def test_streaming_names_a_file_that_does_not_decode(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "001.png").write_bytes(b"not a png")
    source = StreamingImages(
        records_of(tmp_path),
        8,
        batch_size=4,
        train=False,
        augment=NO_AUGMENT,
        seed=0,
        device=CPU,
        num_workers=0,
        root=tmp_path,
    )

    with pytest.raises(DatasetError) as caught:
        batches_of(source)
    assert caught.value.code == "dataset_unreadable"
    assert caught.value.problems[0].startswith("b/001.png: cannot be opened as an image")


# --- statistics and normalization ---------------------------------------------------------------


def test_channel_stats_match_numpy(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 5, "b": 5}))
    pixels = np.stack([np.asarray(Image.open(r.path)) for r in records]).astype(np.float64) / 255
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))

    memory = InMemoryImages(records, 8, batch_size=4, train=True, augment=NO_AUGMENT, seed=0, device=CPU)
    for stats in (channel_stats(memory, 8), channel_stats(records, 8)):
        assert np.allclose(stats[0], mean, atol=1e-9)
        assert np.allclose(stats[1], std, atol=1e-9)

    sampled = channel_stats(records, 8, max_images=4, seed=0)
    assert sampled == channel_stats(records, 8, max_images=4, seed=0)
    assert sampled != channel_stats(records, 8)


def test_normalize_scales_shifts_and_keeps_the_layout_asked():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)

    out = normalize(images, mean, std)
    fast = normalize(images, mean, std, dtype=torch.bfloat16, channels_last=True)

    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-5)
    assert fast.dtype == torch.bfloat16
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.float(), out, atol=0.05)


# --- everything for a spec ----------------------------------------------------------------------


def test_load_data_splits_decodes_and_measures_the_train_set(tmp_path):
    source = make_tree(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    spec = DataSpec(path=str(source), batch_size=4, val_split=0.2, augment=AugmentSpec())

    bundle = load_data(
        spec,
        8,
        source=source,
        work_dir=tmp_path / "work",
        seed=0,
        device=CPU,
        settings=SETTINGS,
        normalization=None,
    )

    assert bundle.class_names == ["a", "b", "c"]
    assert bundle.counts == {"train": 24, "val": 6}
    assert bundle.in_memory and isinstance(bundle.train, InMemoryImages)
    assert bundle.test is None
    assert len(bundle.train) == 6 and len(bundle.val) == 1  # eval batches are twice as big
    val_labels = torch.cat([y for _, y in bundle.val.batches(0)]).tolist()
    assert val_labels == [0, 0, 1, 1, 2, 2]
    assert bundle.mean == channel_stats(bundle.train, 8)[0]

    given = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    streamed = load_data(
        spec.model_copy(update={"subset_per_class": 5, "num_workers": 0}),
        8,
        source=source,
        work_dir=tmp_path / "work",
        seed=0,
        device=CPU,
        settings=EngineSettings(in_memory_max_mb=0),
        normalization=given,
    )
    assert not streamed.in_memory and isinstance(streamed.train, StreamingImages)
    assert streamed.counts == {"train": 12, "val": 3}
    assert (streamed.mean, streamed.std) == given
    assert decoded_bytes(15, 8) == 15 * 3 * 8 * 8


# --- the real CIFAR-10 --------------------------------------------------------------------------


def test_validate_dataset_on_a_cifar10_subset(tmp_path):
    root = make_cifar_subset(tmp_path / "cifar", per_class=5, seed=0)

    report = validate_dataset(root, tmp_path / "work", SETTINGS)

    assert report.class_names == list(CIFAR10_CLASSES)
    assert report.counts == {split: dict.fromkeys(CIFAR10_CLASSES, 5) for split in ("train", "test")}
    assert report.num_images == 100


# --- CUDA (run where there is a GPU) ------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("size", [16, 72])
def test_cuda_batches_match_the_cpu_and_never_wait_for_the_device(tmp_path, size):
    records = records_of(make_tree(tmp_path, {"a": 10, "b": 9}, size=size))
    kwargs = {"batch_size": 8, "train": True, "augment": AugmentSpec(), "seed": 4}
    cpu = InMemoryImages(records, size, device=CPU, **kwargs)
    cuda = InMemoryImages(records, size, device=torch.device("cuda"), **kwargs)
    assert cuda.images.is_cuda and cuda.labels.is_cuda

    torch.cuda.set_sync_debug_mode("error")  # any host sync in the batch path raises
    try:
        on_device = [(x, y) for x, y in cuda.batches(1)]
        tail = [(x, y) for x, y in cuda.batches(1, start=1)]
    finally:
        torch.cuda.set_sync_debug_mode("default")

    expected = batches_of(cpu, epoch=1)
    assert len(on_device) == len(expected) == 3  # 8 + 8 + 3
    for (x, y), (x_cpu, y_cpu) in zip(on_device, expected, strict=True):
        assert torch.equal(y.cpu(), y_cpu)
        if size <= 64:
            assert torch.equal(x.cpu(), x_cpu)  # crop and flip are exact index arithmetic
        else:
            assert (x.cpu().int() - x_cpu.int()).abs().float().mean() < 0.5  # bilinear, float rounding
    assert len(tail) == 2 and torch.equal(tail[0][0], on_device[1][0])


@needs_cuda
def test_cuda_host_resident_images_give_the_same_batches(tmp_path, monkeypatch):
    import training.data as data_module

    records = records_of(make_tree(tmp_path, {"a": 10, "b": 9}, size=16))
    kwargs = {"batch_size": 8, "augment": AugmentSpec(), "seed": 4, "device": torch.device("cuda")}
    resident = InMemoryImages(records, 16, train=True, **kwargs)
    monkeypatch.setattr(data_module, "_keeps_on_device", lambda num_bytes, device: False)
    hosted = InMemoryImages(records, 16, train=True, **kwargs)
    hosted_eval = InMemoryImages(records, 16, train=False, **kwargs)
    assert not hosted.images.is_cuda and hosted.images.is_pinned()

    for (x, y), (x2, y2) in zip(resident.batches(0), hosted.batches(0), strict=True):
        assert x2.is_cuda and torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(torch.cat([x for x, _ in hosted_eval.batches(0)]).cpu(), hosted_eval.images)


@needs_cuda
def test_cuda_streaming_matches_the_cpu(tmp_path):
    records = records_of(make_tree(tmp_path, {"a": 6, "b": 6}, size=12))
    kwargs = {"batch_size": 4, "train": True, "augment": AugmentSpec(), "seed": 1, "num_workers": 2}
    cpu = batches_of(StreamingImages(records, 12, device=CPU, **kwargs))
    cuda = batches_of(StreamingImages(records, 12, device=torch.device("cuda"), **kwargs))
    for (x, y), (x2, y2) in zip(cpu, cuda, strict=True):
        assert x2.is_cuda and torch.equal(x, x2.cpu()) and torch.equal(y, y2.cpu())
