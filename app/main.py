"""The FastAPI application. ``create_app`` builds it, and everything it holds (engine, store, broker
client), from settings; importing this module connects to nothing. Serve it with
``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

from app.api import backbones, datasets, downloads, exports, health, jobs, live, spec
from app.api.callers import CallerCache
from app.api.create_batches import CreateBatches, install_hot_create
from app.api.deps import reject_unknown_query
from app.api.dry_runs import DryRunPool
from app.api.errors import install_error_handlers
from app.api.event_hub import EventHub
from app.api.hot_reads import install_hot_reads
from app.api.limits import BodyLimitMiddleware, HostAllowlistMiddleware
from app.api.middleware import HttpMetrics, MetricsMiddleware, RequestIdMiddleware
from app.console.routes import mount_console
from app.context import Runtime
from app.db.async_reads import AsyncReads
from app.db.session import reads_engine
from app.dispatch.sweep import sweep
from app.observability.metrics import ServiceMetrics
from app.openai_compat import routes as openai_compat
from app.settings import Settings, get_settings
from app.sweeps import routes as sweeps
from app.webhooks import routes as webhooks

API_VERSION = "1"
log = logging.getLogger(__name__)


async def sweep_forever(runtime: Runtime) -> None:
    """Requeue jobs whose worker was lost and re-send tasks that never reached the broker, every few
    seconds (``app.dispatch.sweep.sweep``; any number of API processes may run it at once)."""
    while True:
        await asyncio.sleep(runtime.settings.sweep_interval_seconds)
        try:
            await asyncio.to_thread(sweep, runtime)
        except Exception:  # a database or broker outage: try again next time
            log.warning("the sweep failed", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.warn_if_open()
    runtime = Runtime.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db_slots = asyncio.Semaphore(settings.db_connections)  # on the loop that serves
        unavailable = http_metrics.loop_reads_unavailable
        app.state.async_reads = AsyncReads.for_engine(  # on the loop that serves
            runtime.engine, settings, lambda reason: unavailable.labels(reason).inc()
        )
        if app.state.async_reads is not None:
            await app.state.async_reads.open()
        sweeper = asyncio.create_task(sweep_forever(runtime))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await event_hub.aclose()
        if runtime.stream is not None:
            await runtime.stream.aclose()
        if app.state.async_reads is not None:
            await app.state.async_reads.close()
        service_metrics.close()
        dry_runs.close()
        runtime.close()

    app = FastAPI(
        title="finetune",
        summary="Fine-tunes torchvision image classifiers: submit a spec, follow the job, fetch the weights.",
        version=API_VERSION,
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.engine = runtime.engine
    app.state.session_factory = runtime.factory
    app.state.reads_engine = reads_engine(runtime.engine)
    app.state.callers = CallerCache(settings.auth_cache_seconds)
    app.state.store = runtime.store
    app.state.queue = runtime.queue
    app.state.stream = runtime.stream
    app.state.db_slots = asyncio.Semaphore(settings.db_connections)  # see app.api.deps.db_slot
    app.state.async_reads = None  # the lifespan opens it (app.db.async_reads)
    app.state.create_batches = CreateBatches(app.state)
    registry = CollectorRegistry()
    http_registry = registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several API processes on one port (``finetune serve --api-processes``): each writes its HTTP counts
        # and latencies to files there, and a scrape, whichever process answers it, sums them all. The
        # process_*, python_gc_* metrics would describe the one process that answered: left out.
        MultiProcessCollector(registry)
        http_registry = CollectorRegistry()  # the values go to the files; the scrape reads them from there
    else:
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
    http_metrics = HttpMetrics(http_registry)
    service_metrics = ServiceMetrics(runtime)  # jobs, queues, durations, heartbeats, throughput: at scrape time
    registry.register(service_metrics)
    app.state.metrics_registry = registry
    dry_runs = DryRunPool(settings.dry_run_threads, settings.dry_run_timeout_seconds)
    app.state.dry_runs = dry_runs
    event_hub = EventHub(
        runtime.factory, runtime.stream, settings.max_streams_per_process, settings.max_streams_per_project
    )
    app.state.event_hub = event_hub

    for module in (datasets, jobs, sweeps, exports, live, downloads, backbones, spec, webhooks, openai_compat, health):
        app.include_router(module.router)
    install_hot_reads(app.router.routes)  # first: answered before FastAPI's routing
    install_hot_create(app.router.routes)
    mount_console(app)  # after the API's routes: /v1, /healthz and /docs come first
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)  # before parsing and auth
    app.add_middleware(HostAllowlistMiddleware, allowed=settings.host_allowlist)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response, a 500 included, carries the id
    return app
