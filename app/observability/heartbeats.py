"""Worker heartbeats: every Celery worker process records that it is alive every few seconds; the API exports
them as metrics, and a worker container's health check reads those of its own host.

Production keeps them in Redis (``FT_REDIS_URL``, else the broker's Redis) in one sorted set, worker name ->
the time of its last beat by the Redis server's clock, one clock for every host. The embedded mode keeps a file
per worker under ``$FT_HOME/heartbeats``, whose modification time is the last beat. A worker that stops cleanly
removes its entry; one that dies leaves it to age. A worker is alive while its last beat is younger than
``MISSED_BEATS`` intervals (``FT_WORKER_HEARTBEAT_SECONDS``); an entry an hour old is dropped.

``python -m app.observability.heartbeats`` is the worker image's health check: it exits 0 when this host has
at least one worker and all of them are alive.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import redis

from app.settings import Settings

MISSED_BEATS = 3  # a worker silent this many intervals counts as down
FORGET_AFTER_SECONDS = 3600  # how long a worker that died stays visible (its last beat, for alerts)


class Heartbeats(Protocol):
    def now(self) -> float:
        """The clock the beats are recorded by, in Unix seconds."""

    def beat(self, worker: str, at: float | None = None) -> None:
        """Record that ``worker`` is alive (now, or ``at``)."""

    def forget(self, worker: str) -> None:
        """``worker`` stopped cleanly: remove it."""

    def last_beats(self) -> dict[str, float]:
        """Worker name -> Unix time of its last beat, for the workers seen within ``FORGET_AFTER_SECONDS``."""

    def close(self) -> None: ...


class RedisHeartbeats:
    def __init__(self, url: str, prefix: str = "") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key = f"{prefix}finetune:workers"

    def now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6

    def beat(self, worker: str, at: float | None = None) -> None:
        at = self.now() if at is None else at
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.key, {worker: at})
        pipe.zremrangebyscore(self.key, "-inf", at - FORGET_AFTER_SECONDS)
        pipe.expire(self.key, FORGET_AFTER_SECONDS)  # the last worker gone: the key goes too
        pipe.execute()

    def forget(self, worker: str) -> None:
        self.client.zrem(self.key, worker)

    def last_beats(self) -> dict[str, float]:
        since = self.now() - FORGET_AFTER_SECONDS
        entries: Any = self.client.zrangebyscore(self.key, since, "+inf", withscores=True)  # redis-py's types are loose
        return {name.decode(): float(score) for name, score in entries}

    def close(self) -> None:
        self.client.close()


class FileHeartbeats:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, worker: str) -> Path:
        return self.folder / quote(worker, safe="@")

    def now(self) -> float:
        return time.time()

    def beat(self, worker: str, at: float | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(worker)
        path.touch()
        if at is not None:
            os.utime(path, (at, at))

    def forget(self, worker: str) -> None:
        self._path(worker).unlink(missing_ok=True)

    def last_beats(self) -> dict[str, float]:
        if not self.folder.is_dir():
            return {}
        since = self.now() - FORGET_AFTER_SECONDS
        beats = {}
        for path in self.folder.iterdir():
            try:
                at = path.stat().st_mtime
            except FileNotFoundError:  # forgotten while we looked
                continue
            if at >= since:
                beats[unquote(path.name)] = at
        return beats

    def close(self) -> None:
        pass


def heartbeats_for(settings: Settings) -> Heartbeats:
    """Where this deployment keeps heartbeats: Redis in production, files under FT_HOME when embedded."""
    url = settings.redis_url or (settings.broker_url if settings.celery_broker_url.startswith("redis") else None)
    if url is not None:
        return RedisHeartbeats(url, settings.broker_key_prefix)
    return FileHeartbeats((settings.home / "heartbeats").resolve())


def alive_limit(settings: Settings) -> float:
    """The age of a last beat past which its worker counts as down, in seconds."""
    return MISSED_BEATS * settings.worker_heartbeat_seconds


def check_host(settings: Settings, host: str) -> tuple[bool, str]:
    """Whether every worker of ``host`` (Celery names them ``<name>@<host>``) is alive, and at least one is."""
    store = heartbeats_for(settings)
    try:
        now = store.now()
        beats = {name: at for name, at in store.last_beats().items() if name.endswith(f"@{host}")}
    finally:
        store.close()
    if not beats:
        return False, f"no worker on {host} has recorded a heartbeat"
    late = sorted(f"{name} ({now - at:.0f}s ago)" for name, at in beats.items() if now - at > alive_limit(settings))
    if late:
        return False, f"workers without a recent heartbeat: {', '.join(late)}"
    return True, f"{len(beats)} worker(s) on {host} alive"


def main() -> int:
    try:
        healthy, message = check_host(Settings(), socket.gethostname())
    except (redis.RedisError, OSError) as error:
        healthy, message = False, f"heartbeats unreadable: {type(error).__name__}: {error}"
    print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
