"""The dry runs' own threads: a planned run never occupies the thread pool that the sync routes and the
authentication dependency share, waits at most the dry-run time limit, and a crowd of them is refused
(429) instead of queued without end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.errors import ServiceUnavailable, TooManyRequests

T = TypeVar("T")

WAITING_PER_THREAD = 8  # dry runs allowed to wait for a thread, per thread


def _import_engine() -> None:
    import training.dryrun  # noqa: F401  # torch (tens of seconds on a cold cache): in a pool thread, not at startup


class DryRunPool:
    def __init__(self, threads: int, timeout_seconds: float) -> None:
        self.threads = threads
        self.timeout_seconds = timeout_seconds
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dry-run")
        self.max_pending = threads * (1 + WAITING_PER_THREAD)
        self._pending = 0
        self._lock = threading.Lock()
        self._engine_loaded: asyncio.Future[None] | None = None

    async def run(self, plan: Callable[[], T]) -> T:
        with self._lock:
            if self._pending >= self.max_pending:
                raise TooManyRequests(
                    f"{self._pending} dry runs are already planned or waiting on this server; try again shortly",
                    code="dry_run_busy",
                )
            self._pending += 1
        try:
            await self._load_engine()
        except BaseException:
            self._release()
            raise
        future = asyncio.get_running_loop().run_in_executor(self.executor, plan)
        future.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_seconds)
        except TimeoutError:
            raise ServiceUnavailable(
                f"the dry run was not planned within {self.timeout_seconds:g} s (FT_DRY_RUN_TIMEOUT_SECONDS); "
                "the server is busy: try again shortly",
                code="dry_run_timeout",
            ) from None

    async def _load_engine(self) -> None:
        """Import torch and the engine once, in a dry-run thread, outside the time limit: the first dry run
        of a process waits for it (seconds on a busy host) instead of timing out."""
        if self._engine_loaded is None:
            self._engine_loaded = asyncio.get_running_loop().run_in_executor(self.executor, _import_engine)
        await asyncio.shield(self._engine_loaded)

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
