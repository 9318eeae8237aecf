"""The FastAPI application. ``create_app`` builds it, and everything it holds (engine, store, broker
client), from settings; importing this module connects to nothing. Serve it with
``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from app.api import backbones, datasets, health, jobs, spec
from app.api.errors import install_error_handlers
from app.api.middleware import HttpMetrics, MetricsMiddleware, RequestIdMiddleware
from app.db.session import engine_for, session_factory
from app.queue import TaskQueue
from app.settings import Settings, get_settings
from app.store import LocalArtifactStore

API_VERSION = "1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.warn_if_open()
    engine = engine_for(settings)
    queue = TaskQueue(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        engine.dispose()

    app = FastAPI(
        title="finetune",
        summary="Fine-tunes torchvision image classifiers: submit a spec, follow the job, fetch the weights.",
        version=API_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    app.state.store = LocalArtifactStore(settings.artifacts_path)
    app.state.queue = queue
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    app.state.metrics_registry = registry

    for module in (datasets, jobs, backbones, spec, health):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    app.add_middleware(RequestIdMiddleware)  # outermost: every response, a 500 included, carries the id
    return app
