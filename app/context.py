"""The service's runtime: the infrastructure (engine, sessions, store, queue, event stream) built once from settings
by the API and by each worker process alike.

Not to be confused with ``app.services``, the business logic that is handed this runtime or a session from it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.session import engine_for, session_factory
from app.dispatch.broker import TaskQueue
from app.events import EventStream, install_stream_hooks
from app.settings import Settings
from app.store import ArtifactStore
from app.stores import store_for
from app.webhooks.outbox import install_outbox_hooks


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]  # sessions that send queued tasks and mirror events after commit
    store: ArtifactStore
    queue: TaskQueue
    stream: EventStream | None  # None in the embedded mode: live events are read from the database

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        engine = engine_for(settings)
        factory = session_factory(engine)
        stream = EventStream(settings.redis_url, settings.broker_key_prefix) if settings.redis_url else None
        install_stream_hooks(factory, stream)
        queue = TaskQueue(settings)
        install_outbox_hooks(factory, queue)  # webhook deliveries go out once their status change commits
        return cls(
            settings=settings,
            engine=engine,
            factory=factory,
            store=store_for(settings),
            queue=queue,
            stream=stream,
        )

    def close(self) -> None:
        self.queue.close()
        if self.stream is not None:
            self.stream.close()
        self.engine.dispose()
