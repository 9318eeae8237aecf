"""The batches the fit loop sees: decoded once or streamed, augmented on the device, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.training.images import batches_of, make_tree, png_bytes, records_of, write_image
from training.batches import InMemoryImages, StreamingImages, decoded_bytes
from training.data import load_data
from training.distributed import Shard
from training.errors import DatasetError
from training.imagefolder import ImageRecord
from training.normalization import channel_stats, normalize
from training.plan import train_batches
from training.settings import EngineSettings
from training.spec import AugmentSpec, DataSpec

SETTINGS = EngineSettings()
CPU = torch.device("cpu")
NO_AUGMENT = AugmentSpec(hflip=False, random_crop=False)


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


@pytest.mark.parametrize(("size", "augment"), [(12, AugmentSpec(crop_padding=2)), (72, AugmentSpec())])
def test_streaming_gives_the_in_memory_batches_pixel_for_pixel_on_every_rank(tmp_path, size, augment):
    records = records_of(make_tree(tmp_path, {"a": 6, "b": 5}, size=size))
    kwargs = {"batch_size": 4, "train": True, "augment": augment, "seed": 2, "device": CPU}

    whole = batches_of(InMemoryImages(records, size, **kwargs), epoch=1)
    for world in (1, 2):
        ranks = []
        for rank in range(world):
            shard = Shard(rank, world)
            memory = batches_of(InMemoryImages(records, size, shard=shard, **kwargs), epoch=1)
            stream = batches_of(StreamingImages(records, size, num_workers=0, shard=shard, **kwargs), epoch=1)
            for (x, y), (x2, y2) in zip(memory, stream, strict=True):
                assert torch.equal(x, x2) and torch.equal(y, y2)
            ranks.append(memory)
        for index, (x, y) in enumerate(whole):  # the ranks' rows make up the one-process batch
            assert torch.equal(torch.cat([batches[index][0] for batches in ranks]), x)
            assert torch.equal(torch.cat([batches[index][1] for batches in ranks]), y)


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
    import training.batches as data_module

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
