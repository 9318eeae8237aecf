"""The S3 store's throughput through the API against the same client straight to the gateway.

A SeaweedFS gateway (``weed server -s3``, as the tests start it) and the API (``finetune serve --workers 0``,
embedded database, ``FT_STORE_URL=s3://...``) on this machine:

- upload: a 1 GiB archive POSTed to /v1/datasets (streamed into a multipart upload by the API's boto3 store)
  against boto3's own managed upload of the same file (``upload_file``: 8 MiB parts, 10 threads);
- download: the same 1 GiB object as a job artifact, GET /v1/jobs/{id}/weights streamed through the API,
  against boto3's ``download_fileobj`` (ranged GETs from 10 threads);
- obstore's put and get of the same file, for the choice between the two clients;
- the API process's peak RSS during each transfer (VmHWM, reset before each), against its RSS before;
- the CPU seconds (user, system) the API, the gateway and the client (this process) spend on each transfer:
  where the time goes when they share a few cores.

Goal: through the API at least 80% of direct throughput both ways, the API's memory flat.

    .venv/bin/python bench/store_bench.py [--mib 1024] [--repeat 2] [--only download] [--py-spy api.svg]

``--only`` measures one direction (boto3 and the API, no obstore); ``--py-spy`` records the API process during
the first download (``pip install py-spy``; a name not ending in .svg gets collapsed stacks, one a line).
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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel: socket copies...) CPU time of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def gateway_pid() -> int:
    """The ``weed`` process this one started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name == "weed" and int(rest.split()[1]) == os.getpid():
            return int(stat.parent.name)
    raise RuntimeError("no weed process")


class CpuMeter:
    """CPU seconds (user, system) the API, the gateway and this process (the client) spend on each transfer:
    on a machine with few cores, where a transfer's time goes. The fastest run of each transfer is kept."""

    def __init__(self, api_pid: int) -> None:
        self.pids = {"api": api_pid, "gateway": gateway_pid(), "client": os.getpid()}
        self.spent: dict[str, dict[str, Any]] = {}
        self.fastest: dict[str, float] = {}

    def timed(self, label: str, action: Callable[[], Any]) -> tuple[float, Any]:
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        if seconds < self.fastest.get(label, float("inf")):
            self.fastest[label] = seconds
            self.spent[label] = {
                name: [round(now - then, 2) for now, then in zip(cpu_seconds(pid), before[name], strict=True)]
                for name, pid in self.pids.items()
            }
            self.spent[label]["wall"] = round(seconds, 2)
        return seconds, result


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

    def measure(self, meter: CpuMeter, label: str, action: Callable[[], Any]) -> tuple[float, Any, int, int]:
        """(seconds, result, RSS before in KiB, peak RSS during in KiB)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        before = memory_kb(self.process.pid, "VmRSS")
        seconds, result = meter.timed(label, action)
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


def boto3_direct(gateway: Gateway, path: Path, meter: CpuMeter) -> dict[str, float]:
    client = s3_client(gateway)
    put, _ = meter.timed("boto3_put", lambda: client.upload_file(str(path), gateway.bucket, "direct/boto3"))
    with Path(os.devnull).open("wb") as sink:
        get, _ = meter.timed("boto3_get", lambda: client.download_fileobj(gateway.bucket, "direct/boto3", sink))
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
    parser.add_argument(
        "--only", choices=["upload", "download"], help="measure one direction (boto3 direct and the API; no obstore)"
    )
    parser.add_argument("--py-spy", type=Path, metavar="SVG", help="profile the API's first download with py-spy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as folder:
        root = Path(folder)
        path = root / "archive.tar"
        sha = make_file(path, args.mib)
        size = path.stat().st_size
        with running_gateway(root / "weed") as gateway:
            api = Api(root / "home", gateway)
            try:
                figures = run(api, gateway, path, size, sha, args)
            finally:
                api.stop()
    mibs = size / MIB
    report = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "load_average": os.getloadavg(),
        "size_mib": mibs,
        **{name: round(mibs / seconds, 1) for name, seconds in figures["seconds"].items()},
        **{
            f"api_vs_boto3_{direction}": round(figures["seconds"][direct] / figures["seconds"][api], 3)
            for direction, direct, api in [
                ("upload", "boto3_put", "api_upload"),
                ("download", "boto3_get", "api_download"),
            ]
            if api in figures["seconds"]
        },
        "api_rss_mib": figures["rss"],
        "cpu_seconds": figures["cpu"],
    }
    print(json.dumps(report, indent=2))


def run(api: Api, gateway: Gateway, path: Path, size: int, sha: str, args: argparse.Namespace) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    rss: dict[str, float] = {}
    meter = CpuMeter(api.process.pid)
    boto3_runs = [boto3_direct(gateway, path, meter) for _ in range(args.repeat)]
    if args.only != "download":
        seconds["boto3_put"] = best(boto3_runs)["put"]
    if args.only != "upload":
        seconds["boto3_get"] = best(boto3_runs)["get"]
    if args.only is None:
        obstore_runs = [obstore_direct(gateway, path) for _ in range(args.repeat)]
        seconds["obstore_put"], seconds["obstore_get"] = best(obstore_runs)["put"], best(obstore_runs)["get"]
    if args.only == "download":  # the object straight into the API's store, where an upload would put it
        key = "bench/archive.tar"
        s3_client(gateway).upload_file(str(path), gateway.bucket, f"bench/{key}")
    else:
        uploads, first = [], None
        for _ in range(args.repeat):
            took, shown, before, peak = api.measure(meter, "api_upload", lambda: api_upload(api, path))
            assert shown["sha256"] == sha and shown["bytes"] == size, shown
            first = first or shown["id"]  # the bytes stay stored once, under the first upload's key
            uploads.append(took)
            rss["before_upload"], rss["peak_upload"] = round(before / 1024, 1), round(peak / 1024, 1)
        seconds["api_upload"] = min(uploads)
        key = f"datasets/{first}/archive.tar"
    if args.only != "upload":
        job_id = register_weights(api, key, size, sha)
        downloads = []
        for attempt in range(args.repeat):
            spy = profiler(api, args.py_spy) if attempt == 0 and args.py_spy else None
            took, got, before, peak = api.measure(
                meter, "api_download", lambda: api_download(api, job_id, follow=False)
            )
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(120)
            assert got == size
            downloads.append(took)
            rss["before_download"], rss["peak_download"] = round(before / 1024, 1), round(peak / 1024, 1)
        seconds["api_download"] = min(downloads)
    return {"seconds": seconds, "rss": rss, "cpu": meter.spent}


def profiler(api: Api, svg: Path) -> subprocess.Popen[bytes]:
    """py-spy recording the API process (its busy threads) into a flame graph (``.svg``) or collapsed
    stacks (any other name: one line a stack with its sample count, for grep)."""
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(api.process.pid), "--output", str(svg), "--rate", "200"]
    command += [] if svg.suffix == ".svg" else ["--format", "raw"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)  # py-spy attached before the download starts
    return process


if __name__ == "__main__":
    main()
