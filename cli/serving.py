"""What ``finetune serve`` shows a person: a short block (where the API and its docs are, where the data lives,
that the workers are ready, how to stop), with the workers' own output (Celery's banners, kombu's chatter)
and the service's log records in a log file under FT_HOME, or on the terminal with ``--verbose``.

Readiness is what a user would check by hand: the API answers ``/healthz``, and every worker has recorded a
heartbeat since this start (a Celery worker beats once it takes tasks: ``worker.celery_app``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.observability.heartbeats import heartbeats_for
from app.settings import Settings

READY_TIMEOUT_SECONDS = 300.0  # a cold start imports torch in each worker: tens of seconds on a slow disk


def serve_log_path(settings: Settings) -> Path:
    """The log file of an embedded ``serve``: the API's records and every worker's output."""
    return (settings.home / "logs" / "serve.log").resolve()


@dataclass(frozen=True)
class ServeAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def local_url(self) -> str:
        """Where this machine reaches it: a wildcard bind is reached on the loopback address."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
        return ServeAddress(wildcard.get(self.host, self.host), self.port).url


def wait_until_ready(
    address: ServeAddress,
    settings: Settings,
    worker_names: Sequence[str],
    since: float,
    *,
    stopping: Callable[[], bool],
    timeout: float = READY_TIMEOUT_SECONDS,
) -> list[str]:
    """Wait until the API answers and each of ``worker_names`` has beaten since ``since``; return the workers
    still not ready when ``timeout`` ran out (empty: all ready)."""
    deadline = time.monotonic() + timeout
    api_up = False
    waiting = set(worker_names)
    beats = heartbeats_for(settings)
    try:
        while not stopping() and time.monotonic() < deadline:
            api_up = api_up or _answers(address.local_url)
            waiting -= {name for name, at in beats.last_beats().items() if at >= since}
            if api_up and not waiting:
                return []
            time.sleep(0.25)
    finally:
        beats.close()
    return sorted(waiting) if api_up else ["the API", *sorted(waiting)]


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ready_block(
    address: ServeAddress,
    settings: Settings,
    *,
    workers: int,
    log_path: Path | None,
    seconds: float,
    not_ready: Sequence[str] = (),
) -> str:
    """The lines ``serve`` prints once it is up."""
    url = address.url
    lines = [f"finetune is up ({seconds:.0f}s)", f"  API        {url}", f"  API docs   {url}/docs"]
    lines.append(f"  FT_HOME    {settings.home.resolve()}  (database, data sets, artifacts)")
    if log_path is not None:
        lines.append(f"  logs       {log_path}  (--verbose prints them here instead)")
    if workers == 0:
        lines.append("  workers    none (--workers 0): jobs wait for a `finetune worker` elsewhere")
    elif not_ready:
        where = f"see {log_path}" if log_path is not None else "see the log above"
        lines.append(f"  workers    NOT READY after {seconds:.0f}s: {', '.join(not_ready)} ({where})")
    else:
        lines.append(f"  workers    ready: {workers} training, 1 data set validation")
    if not settings.auth_required:
        lines.append(f"  auth       off: every request acts as project {settings.default_project!r}")
    lines.append("Press Ctrl-C to stop (a running job checkpoints and resumes at the next start).")
    return "\n".join(lines)
