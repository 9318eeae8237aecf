"""The API under a platform's polling load: ``wrk -t2 -c32`` against the production form (``finetune serve
--workers 0`` on PostgreSQL and Redis, auth on) and, in the same run, against a bare FastAPI endpoint that
returns a job-sized JSON object. Prints each endpoint's rate, latencies and errors, and its ratio to the
bare rate (ratios measured in one run are what a loaded machine lets us trust), and the server's CPU time a
request: on a machine other work loads, what each request costs the server is steadier than its rate.

Goals (issue 14): GET /v1/jobs/{id} >= 50% of the bare rate with p99 < 100 ms; GET /v1/jobs (a page of 20)
>= 25%; POST /v1/jobs >= 20% with p99 < 250 ms and every request answered; the embedded mode (``--embedded``:
SQLite and the file broker) within 2x of those. ``POST /v1/jobs (keyed)`` measures, without a goal, creates
that each carry a new Idempotency-Key, as the Python client and the CLI send them (they are written one at a
time, not batched: ``app.api.create_batches``).

    .venv/bin/python bench/api_bench.py [--seconds 10] [--connections 32] [--embedded] [--profile DIR]

Needs ``wrk`` (Debian: ``apt-get install wrk``) and the PostgreSQL and Redis of the tests (FT_TEST_POSTGRES_URL,
FT_TEST_REDIS_URL). ``--profile DIR`` records each endpoint's load with py-spy (``pip install py-spy``) into
DIR, as collapsed stacks of the thread holding the GIL (for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.context import Runtime
from app.db.session import transaction
from app.settings import Settings
from tests.app.factories import make_ready_dataset
from tests.app.servers import REPO, free_port
from tests.integration.stack import Stack, running_stack, wait_until_ready

POSTGRES = os.environ.get("FT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("FT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PRODUCTION_CLOCKS = {"FT_SWEEP_INTERVAL_SECONDS": "5", "FT_REDISPATCH_AFTER_SECONDS": "15"}
# Thousands of submissions in a run: the project's queued-jobs limit (default 1000) would answer them 429.
BENCH_LIMITS = {"FT_PROJECT_MAX_QUEUED_JOBS": "1000000"}
BARE_APP = """
from fastapi import FastAPI

app = FastAPI()
JOB = {JOB!r}


@app.get("/bare")
def bare() -> dict:
    return JOB
"""
POST_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{auth}"
"""
KEYED_SCRIPT = (  # each request a new Idempotency-Key, as the Python client and the CLI send one with every create
    POST_SCRIPT
    + """
local started = 0
function setup(thread)
    started = started + 1
    thread:set("id", started .. "-" .. os.time())
end
local counter = 0
function request()
    counter = counter + 1
    wrk.headers["Idempotency-Key"] = "bench-" .. id .. "-" .. counter
    return wrk.format(nil, nil, nil, nil)
end
"""
)
GOALS = {"GET /v1/jobs/{id}": (0.50, 100.0), "GET /v1/jobs": (0.25, None), "POST /v1/jobs": (0.20, 250.0)}


@dataclass
class Load:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers, timeouts, broken connections
    cpu_ms: float = 0.0  # the server process's CPU time a request (user + system)

    def row(self, bare: float, bare_cpu_ms: float, embedded: bool = False) -> str:
        ratio = self.rate / bare if bare else 0.0
        cpu_ratio = bare_cpu_ms / self.cpu_ms if self.cpu_ms else 0.0
        goal = GOALS.get(self.name)
        verdict = ""
        if goal is not None:
            share, p99 = goal
            if embedded:  # within 2x of the goals: half the share, twice the p99
                share, p99 = share / 2, (p99 * 2 if p99 is not None else None)
            met = ratio >= share and (p99 is None or self.p99_ms < p99) and self.errors == 0
            verdict = f"  goal >= {share:.0%}{f', p99 < {p99:.0f} ms' if p99 else ''}: {'met' if met else 'NOT met'}"
        return (
            f"{self.name:<20} {self.rate:8.0f} req/s  {ratio:6.1%} of bare  p50 {self.p50_ms:6.1f} ms  "
            f"p99 {self.p99_ms:7.1f} ms  {self.requests:6d} requests  {self.errors} errors  "
            f"CPU {self.cpu_ms:5.2f} ms/request ({cpu_ratio:6.1%} of bare's rate if CPU-bound){verdict}"
        )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(name: str, output: str) -> Load:
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return Load(name, rate, _ms(latency.get("50", "0ms")), _ms(latency.get("99", "0ms")), requests, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants alive now (the API processes uvicorn starts),
    their threads included."""
    stats: dict[int, tuple[int, float]] = {}  # pid: (parent pid, CPU seconds)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, total = {pid}, 0.0
    for _ in range(4):  # serve -> uvicorn's processes (-> multiprocessing's helpers)
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


def run_wrk(
    name: str, url: str, args: argparse.Namespace, headers: dict[str, str], script: Path | None, pid: int
) -> Load:
    command = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "--timeout", "2s"]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    began = cpu_seconds(pid)
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    load = parse_wrk(name, output)
    load.cpu_ms = (cpu_seconds(pid) - began) * 1000 / max(load.requests, 1)
    return load


def profiled(pid: int, out: Path | None, name: str, seconds: int) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # pip install py-spy
    # --gil: only the thread holding the GIL, so the samples are Python's CPU time, not its waits on the database
    command = [spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", "100", "--duration", str(seconds)]
    command += ["--format", "raw", "--output", str(out / f"{slug}.txt")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def seed(stack_env: dict[str, str], url: str, auth: dict[str, str], jobs: int) -> tuple[str, dict]:
    """A ready data set in the key's project and ``jobs`` jobs on it; the body of one more."""
    if "FT_DATABASE_URL" in stack_env:
        settings = Settings(
            database_url=stack_env["FT_DATABASE_URL"],
            broker_url=REDIS,
            broker_key_prefix=stack_env["FT_BROKER_KEY_PREFIX"],
        )
    else:
        settings = Settings(home=Path(stack_env["FT_HOME"]))
    services = Runtime.from_settings(settings)
    try:
        with transaction(services.factory) as session:
            dataset = make_ready_dataset(session, project="integration", per_class={"cat": 40, "dog": 40}).id
    finally:
        services.close()
    body = {
        "spec": {
            "backbone": {"name": "resnet18"},
            "data": {"dataset": dataset, "image_size": 32, "batch_size": 4},
            "training": {"epochs": 3},
        }
    }
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        ids = [client.post("/v1/jobs", json=body).raise_for_status().json()["id"] for _ in range(jobs)]
        job = client.get(f"/v1/jobs/{ids[0]}").raise_for_status().json()
    return ids[0], {"body": body, "job": job}


@contextmanager
def embedded_stack(home: Path) -> Iterator[Stack]:
    """``finetune serve --workers 0`` in the embedded mode (SQLite, the file broker), auth on, an API key."""
    env = {**os.environ, **BENCH_LIMITS, "FT_HOME": str(home), "FT_AUTH_ENABLED": "true", "PYTHONUNBUFFERED": "1"}
    for name in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_REDIS_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "cli"]
    subprocess.run([*command, "db", "upgrade"], cwd=REPO, env=env, check=True, capture_output=True)
    key = (
        subprocess.run(
            [*command, "keys", "create", "--project", "integration"], cwd=REPO, env=env, check=True, capture_output=True
        )
        .stdout.decode()
        .strip()
    )
    port = free_port()
    log = (home / "api.log").open("wb")
    api = subprocess.Popen(
        [*command, "serve", "--workers", "0", "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
    )
    built = Stack(f"http://127.0.0.1:{port}", env, home, api, {"Authorization": f"Bearer {key}"})
    try:
        wait_until_ready(built)
        yield built
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(30)


def bare_server(job: dict, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    (home / "bare_app.py").write_text(textwrap.dedent(BARE_APP.replace("{JOB!r}", repr(job))))
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=home)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/bare", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the bare app did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy flame graphs of each load, here")
    parser.add_argument("--embedded", action="store_true", help="the embedded mode (SQLite) instead of PostgreSQL")
    parser.add_argument("--only", default="", help="comma-separated subset: bare,get,list,post,keyed")
    parser.add_argument(
        "--api-processes", type=int, default=None, help="FT_API_PROCESSES (default: the setting's, one per core)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    wanted = set(args.only.split(",")) if args.only else {"bare", "get", "list", "post", "keyed"}
    home = Path(tempfile.mkdtemp(prefix="api-bench-"))
    loads: list[Load] = []
    try:
        if args.api_processes is not None:
            os.environ["FT_API_PROCESSES"] = str(args.api_processes)
        env = {**PRODUCTION_CLOCKS, **BENCH_LIMITS}
        stacked = embedded_stack(home) if args.embedded else running_stack(POSTGRES, REDIS, home, **env)
        with stacked as stack:
            auth = stack.headers["Authorization"]
            job_id, sample = seed(stack.env, stack.url, stack.headers, jobs=25)
            bare, bare_url = bare_server(sample["job"], home)
            script, keyed = home / "post.lua", home / "post-keyed.lua"
            script.write_text(POST_SCRIPT.format(body=json.dumps(json.dumps(sample["body"])), auth=auth))
            keyed.write_text(KEYED_SCRIPT.format(body=json.dumps(json.dumps(sample["body"])), auth=auth))
            plan = [
                ("bare", "GET /bare", f"{bare_url}/bare", {}, None, bare.pid),
                ("get", "GET /v1/jobs/{id}", f"{stack.url}/v1/jobs/{job_id}", stack.headers, None, stack.api.pid),
                ("list", "GET /v1/jobs", f"{stack.url}/v1/jobs?limit=20", stack.headers, None, stack.api.pid),
                ("post", "POST /v1/jobs", f"{stack.url}/v1/jobs", {}, script, stack.api.pid),
                ("keyed", "POST /v1/jobs (keyed)", f"{stack.url}/v1/jobs", {}, keyed, stack.api.pid),
            ]
            try:
                for key, name, url, headers, lua, pid in plan:
                    if key not in wanted:
                        continue
                    spy = profiled(pid, args.profile, name, args.seconds)
                    loads.append(run_wrk(name, url, args, headers, lua, pid))
                    if spy is not None:
                        spy.wait(60)
                    base = loads[0] if loads[0].name == "GET /bare" else Load("", 0.0, 0, 0, 0, 0)
                    print(loads[-1].row(base.rate, base.cpu_ms, args.embedded), flush=True)
            finally:
                bare.terminate()
                bare.wait(10)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    processes = args.api_processes or ("1" if args.embedded else f"default ({os.cpu_count()} cores)")
    print(f"\nload average: {os.getloadavg()[0]:.2f} (1 min); wrk -t2 -c{args.connections} -d{args.seconds}s; ", end="")
    print(f"API processes: {processes}; bare: 1 uvicorn process")


if __name__ == "__main__":
    main()
