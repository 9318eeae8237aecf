"""Archives and images built in the tests, and a few shortcuts over the API."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image

from app.dispatch.names import CPU_QUEUE, VALIDATE_DATASET
from app.services.dataset_validation import run_dataset_validation
from app.settings import Settings
from app.statuses import DatasetStatus


def broker_messages(app: FastAPI, queue: str) -> list[dict[str, Any]]:
    """Take every message waiting on ``queue`` from the app's real broker: task name, args, expiry."""
    taken = []
    with app.state.queue.celery.connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()
            taken.append({"task": message.headers["task"], "args": args, "expires": message.headers.get("expires")})
    return taken


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def image_tree(classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, splits: tuple[str, ...] = ("train",)):
    """{relative path: bytes} of a tiny ImageFolder set."""
    files = {}
    for split in splits:
        for index, name in enumerate(classes):
            for i in range(per_class):
                files[f"{split}/{name}/{i}.png"] = png_bytes((40 * index % 255, 100, 20 * i % 255))
    return files


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_gz_bytes(root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(root.rglob("*")):
            archive.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue()


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    filename: str = "pets.zip",
    name: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    form = {"name": name} if name is not None else None
    return await client.post("/v1/datasets", files={"file": (filename, data)}, data=form, headers=headers)


def validate_queued(app: FastAPI, settings: Settings) -> list[str]:
    """Do what the worker's validation task does for every message waiting on the cpu queue."""
    done = []
    for message in broker_messages(app, CPU_QUEUE):
        assert message["task"] == VALIDATE_DATASET
        [dataset_id] = message["args"]
        run_dataset_validation(app.state.session_factory, app.state.store, settings, dataset_id)
        done.append(dataset_id)
    return done


async def ready_dataset(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, files: dict[str, bytes] | None = None
) -> dict[str, Any]:
    """A data set uploaded and validated to ``ready``, as the API shows it."""
    response = await upload(client, zip_bytes(files or image_tree()))
    assert response.status_code == 201, response.text
    assert validate_queued(app, settings) == [response.json()["id"]]
    shown = (await client.get(f"/v1/datasets/{response.json()['id']}")).json()
    assert shown["status"] == DatasetStatus.READY, shown
    return shown


def job_body(dataset_id: str, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset_id, "image_size": 32, "batch_size": 4},
        "training": {"epochs": 3},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return {"spec": spec}
