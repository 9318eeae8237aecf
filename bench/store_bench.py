"""The S3 store's throughput through the API against the same client straight to the gateway.

A SeaweedFS gateway (``weed server -s3``, as the tests start it) and the API (``finetune serve --workers 0``,
embedded database, ``FT_STORE_URL=s3://...``) on this machine:

- upload: a 1 GiB archive POSTed to /v1/datasets (streamed into a multipart upload by the API's boto3 store)
  against boto3's own managed upload of the same file (``upload_file``: 8 MiB parts, 10 threads);
- download: the same 1 GiB object as a job artifact, GET /v1/jobs/{id}/weights streamed through the API,
  against boto3's ``download_fileobj`` (ranged GETs from 10 threads);
- obstore's put and get of the same file, for the choice between the two clients;
- the API process's peak RSS during each transfer (VmHWM, reset before each), against its RSS before.

Goal: through the API at least 80% of direct throughput both ways, the API's memory flat.

    .venv/bin/python bench/store_bench.py [--mib 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.app.servers import REPO, free_port, memory_kb
from tests.s3 import Gateway, running_gateway, s3_client

MIB = 1 << 20


def make_file(path: Path, mib: int) -> str:
    """``mib`` MiB that do not compress (a random 16 MiB block, rotated), and their sha256."""
    block = os.urandom(16 * MIB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(mib // 16):
            chunk = block[i:] + block[:i]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


class Api:
    def __init__(self, home: Path, gateway: Gateway) -> None:
        self.env = {**os.environ, **gateway.env("bench"), "FT_HOME": str(home), "FT_MAX_UPLOAD_BYTES": str(8 << 30)}
        self.env.pop("FT_DATABASE_URL", None)
        subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], cwd=REPO, env=self.env, check=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (home / "api.log").open("wb")
        command = [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(self.port)]
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the API did not come up")

    def measure(self, action: Callable[[], Any]) -> tuple[float, Any, int, int]:
        """(seconds, result, RSS before in KiB, peak RSS during in KiB)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        before = memory_kb(self.process.pid, "VmRSS")
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        return seconds, result, before, memory_kb(self.process.pid, "VmHWM")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)


def multipart_body(path: Path, boundary: str) -> Iterator[bytes]:
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
           "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    with path.open("rb") as file:
        while chunk := file.read(4 * MIB):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def api_upload(api: Api, path: Path) -> dict[str, Any]:
    boundary = "benchboundary7d1c"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with httpx.Client(timeout=600) as client:
        response = client.post(f"{api.url}/v1/datasets", content=multipart_body(path, boundary), headers=headers)
    response.raise_for_status()
    return dict(response.json())


def api_download(api: Api, job_id: str, follow: bool) -> int:
    got = 0
    url = f"{api.url}/v1/jobs/{job_id}/weights"
    with httpx.Client(timeout=600, follow_redirects=follow) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(4 * MIB):
            got += len(chunk)
    return got


def register_weights(api: Api, key: str, size: int, sha256: str) -> str:
    """A job whose weights artifact is the object at ``key`` (written straight into the API's database)."""
    from app.context import Runtime
    from app.db.session import transaction
    from app.services.job_records import register_artifact
    from app.settings import Settings
    from app.store import StoredObject
    from tests.app.factories import make_job

    services = Runtime.from_settings(Settings(home=Path(api.env["FT_HOME"])))
    try:
        with transaction(services.factory) as session:
            job = make_job(session)
            register_artifact(session, job.id, "model.safetensors", StoredObject(key, size, sha256))
            return str(job.id)
    finally:
        services.close()


def boto3_direct(gateway: Gateway, path: Path) -> dict[str, float]:
    client = s3_client(gateway)
    start = time.perf_counter()
    client.upload_file(str(path), gateway.bucket, "direct/boto3")
    put = time.perf_counter() - start
    with Path(os.devnull).open("wb") as sink:
        start = time.perf_counter()
        client.download_fileobj(gateway.bucket, "direct/boto3", sink)
        get = time.perf_counter() - start
    client.delete_object(Bucket=gateway.bucket, Key="direct/boto3")
    return {"put": put, "get": get}


def obstore_direct(gateway: Gateway, path: Path) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        gateway.bucket,
        endpoint=gateway.endpoint,
        access_key_id=gateway.access_key,
        secret_access_key=gateway.secret_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    with path.open("rb") as file:
        start = time.perf_counter()
        obstore.put(store, "direct/obstore", file, chunk_size=8 * MIB, max_concurrency=10)
        put = time.perf_counter() - start
    start = time.perf_counter()
    for _chunk in obstore.get(store, "direct/obstore").stream(min_chunk_size=4 * MIB):
        pass
    get = time.perf_counter() - start
    obstore.delete(store, "direct/obstore")
    return {"put": put, "get": get}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="the archive's size, in MiB (a multiple of 16)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each transfer; the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as folder:
        root = Path(folder)
        path = root / "archive.tar"
        sha = make_file(path, args.mib)
        size = path.stat().st_size
        with running_gateway(root / "weed") as gateway:
            api = Api(root / "home", gateway)
            try:
                figures = run(api, gateway, path, size, sha, args.repeat)
            finally:
                api.stop()
    mibs = size / MIB
    report = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "load_average": os.getloadavg(),
        "size_mib": mibs,
        **{name: round(mibs / seconds, 1) for name, seconds in figures["seconds"].items()},
        "api_vs_boto3_upload": round(figures["seconds"]["boto3_put"] / figures["seconds"]["api_upload"], 3),
        "api_vs_boto3_download": round(figures["seconds"]["boto3_get"] / figures["seconds"]["api_download"], 3),
        "api_rss_mib": figures["rss"],
    }
    print(json.dumps(report, indent=2))


def run(api: Api, gateway: Gateway, path: Path, size: int, sha: str, repeat: int) -> dict[str, Any]:
    boto3_runs = [boto3_direct(gateway, path) for _ in range(repeat)]
    obstore_runs = [obstore_direct(gateway, path) for _ in range(repeat)]
    uploads, rss, first = [], {}, None
    for _ in range(repeat):
        seconds, shown, before, peak = api.measure(lambda: api_upload(api, path))
        assert shown["sha256"] == sha and shown["bytes"] == size, shown
        first = first or shown["id"]  # the bytes stay stored once, under the first upload's key
        uploads.append(seconds)
        rss["before_upload"], rss["peak_upload"] = round(before / 1024, 1), round(peak / 1024, 1)
    job_id = register_weights(api, f"datasets/{first}/archive.tar", size, sha)
    downloads = []
    for _ in range(repeat):
        seconds, got, before, peak = api.measure(lambda: api_download(api, job_id, follow=False))
        assert got == size
        downloads.append(seconds)
        rss["before_download"], rss["peak_download"] = round(before / 1024, 1), round(peak / 1024, 1)
    return {
        "seconds": {
            "boto3_put": best(boto3_runs)["put"],
            "boto3_get": best(boto3_runs)["get"],
            "obstore_put": best(obstore_runs)["put"],
            "obstore_get": best(obstore_runs)["get"],
            "api_upload": min(uploads),
            "api_download": min(downloads),
        },
        "rss": rss,
    }


if __name__ == "__main__":
    main()
