"""Validation of uploaded archives, as the worker's task runs it: real archives built here, a real
CIFAR-10 subset, and the unsafe ones (zip-slip, links, zip bombs, one class) ending ``failed`` with reasons."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from app.db.models import Dataset
from app.db.session import transaction
from app.services.dataset_validation import dataset_folder, run_dataset_validation
from app.statuses import DatasetStatus
from tests.app.helpers import image_tree, tar_gz_bytes, upload, validate_queued, zip_bytes
from tests.cifar import CIFAR10_CLASSES, make_cifar_subset

pytestmark = pytest.mark.anyio


async def uploaded(client, archive: bytes, filename: str = "set.zip") -> str:
    response = await upload(client, archive, filename=filename)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def validated(client, app, settings, archive: bytes, filename: str = "set.zip") -> dict:
    dataset_id = await uploaded(client, archive, filename)
    assert validate_queued(app, settings) == [dataset_id]
    return (await client.get(f"/v1/datasets/{dataset_id}")).json()


async def test_a_cifar10_subset_becomes_ready(client, app, settings, tmp_path):
    tree = make_cifar_subset(tmp_path / "cifar", per_class=4, test_per_class=2)
    archive = tar_gz_bytes(tree)
    shown = await validated(client, app, settings, archive, filename="cifar-subset.tar.gz")
    assert shown["status"] == "ready", shown["error"]
    assert shown["class_names"] == sorted(CIFAR10_CLASSES)
    assert shown["counts"]["train"] == dict.fromkeys(sorted(CIFAR10_CLASSES), 4)
    assert shown["counts"]["test"] == dict.fromkeys(sorted(CIFAR10_CLASSES), 2)
    assert shown["num_images"] == 60
    assert shown["bytes"] == len(archive)
    with transaction(app.state.session_factory) as session:
        folder = dataset_folder(app.state.store, settings, session.get(Dataset, shown["id"]))
    assert sorted(p.name for p in (folder / "train").iterdir()) == sorted(CIFAR10_CLASSES)


async def test_validation_is_idempotent(client, app, settings):
    dataset_id = await uploaded(client, zip_bytes(image_tree()))
    factory, store = app.state.session_factory, app.state.store
    assert run_dataset_validation(factory, store, settings, dataset_id) == DatasetStatus.READY
    with transaction(factory) as session:
        first = session.get(Dataset, dataset_id).validated_at
    assert run_dataset_validation(factory, store, settings, dataset_id) == DatasetStatus.READY
    with transaction(factory) as session:
        assert session.get(Dataset, dataset_id).validated_at == first
    assert run_dataset_validation(factory, store, settings, "ds_01JAAAAAAAAAAAAAAAAAAAAAAA") is None


def zip_slip() -> bytes:
    return zip_bytes({**image_tree(), "../../outside.png": b"x"})


def zip_with_link() -> bytes:
    return zip_bytes(image_tree(), symlinks={"train/cat/link.png": "/etc/passwd"})


def tar_with_link() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in image_tree().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("train/dog/evil.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        archive.addfile(link)
    return buffer.getvalue()


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in image_tree().items():
            archive.writestr(name, data)
        archive.writestr("train/cat/bomb.png", b"\0" * (64 << 20))  # 64 MiB of zeros: about 64 kB compressed
    return buffer.getvalue()


def one_class() -> bytes:
    return zip_bytes(image_tree(("cat",), per_class=4))


def corrupt_image() -> bytes:
    return zip_bytes({**image_tree(), "train/dog/broken.png": b"\x89PNG\r\n\x1a\n truncated"})


def not_an_archive() -> bytes:
    return b"this is a text file, not an archive" * 10


def truncated_zip() -> bytes:
    whole = zip_bytes(image_tree(per_class=10))
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("build", "code", "reason"),
    [
        (zip_slip, "dataset_invalid", "points outside the archive"),
        (zip_with_link, "dataset_invalid", "symbolic link"),
        (tar_with_link, "dataset_invalid", "is a link"),
        (zip_bomb, "dataset_invalid", "zip bomb"),
        (one_class, "dataset_invalid", "at least two classes"),
        (corrupt_image, "dataset_unreadable", "broken.png"),
        (not_an_archive, "dataset_invalid", "not a zip or tar archive"),
        (truncated_zip, "dataset_invalid", "set.zip"),
    ],
    ids=[
        "zip-slip",
        "zip-symlink",
        "tar-symlink",
        "zip-bomb",
        "one-class",
        "corrupt-image",
        "not-archive",
        "truncated",
    ],
)
async def test_unsafe_or_unusable_archives_fail_with_reasons(client, app, settings, build, code, reason):
    shown = await validated(client, app, settings, build())
    assert shown["status"] == "failed"
    assert shown["error"]["code"] == code
    assert any(reason in line for line in shown["error"]["reasons"]), shown["error"]
    assert shown["class_names"] is None and shown["counts"] is None
    work = settings.data_path / "datasets" / shown["id"]
    assert not work.exists() or not any(work.iterdir())  # nothing half-extracted stays
    assert not (settings.home.parent / "outside.png").exists()


async def test_a_tampered_archive_fails(client, app, settings):
    dataset_id = await uploaded(client, zip_bytes(image_tree()))
    path = app.state.store.local_path(f"datasets/{dataset_id}/set.zip")
    path.write_bytes(path.read_bytes() + b"tampered")
    validate_queued(app, settings)
    shown = (await client.get(f"/v1/datasets/{dataset_id}")).json()
    assert shown["status"] == "failed" and shown["error"]["code"] == "dataset_corrupt"
