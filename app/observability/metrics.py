"""The service's Prometheus metrics, read at scrape time from where the truth is kept.

HTTP counts and latencies are observed by ``app.api.middleware``; everything else is collected here when
``/metrics`` is scraped, so every API replica reports the same numbers and nothing is lost when one restarts:

- ``finetune_jobs{status}``: jobs by status, counted in the database.
- ``finetune_queue_depth{queue}``: task messages waiting in the broker, not yet taken by a worker: the Redis
  lists of the queue (with the broker's key prefix, and kombu's priority lists), or the embedded file broker's
  message files.
- ``finetune_job_duration_seconds{status}``: a histogram of finished jobs' durations (first start to end),
  over every finished job in the database. Counting from the record rather than observing in the worker keeps
  it a true cumulative histogram that no restart resets, and needs no scrape of short-lived worker processes
  (each job runs in a pool child that exits with it); ``increase(...[1d])`` gives any recent window.
- ``finetune_worker_last_heartbeat_seconds{worker}`` (Unix time) and ``finetune_workers_alive``, from the
  heartbeats the workers record (``app.observability.heartbeats``).
- ``finetune_images_per_second``: training throughput of all running jobs together, each from its latest step
  metrics of the current attempt (or its latest epoch's, when the attempt has no step metrics yet). No label
  names a job: anyone who can scrape must not learn other projects' job ids (a job's own throughput is in
  its events).
- ``finetune_metrics_source_up{source}``: 1 when the database, the broker and the heartbeat store answered
  this scrape; a source that did not answer leaves its metrics out instead of failing the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.orm import Session, sessionmaker

from app.context import Runtime
from app.dispatch.names import CPU_QUEUE, GPU_QUEUE
from app.observability.heartbeats import Heartbeats, alive_limit, heartbeats_for
from app.repositories import job_stats
from app.settings import Settings

log = logging.getLogger(__name__)

# Seconds: jobs last from a minute (a linear probe) to days (a large backbone on a large set).
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0)
QUEUES = (GPU_QUEUE, CPU_QUEUE)


# --- the broker --------------------------------------------------------------------------------------


class QueueDepth:
    """Messages waiting per queue, read the way kombu's transport stores them."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.celery_broker_url
        self.folder = settings.broker_path / "queue"
        self.prefix = settings.broker_key_prefix
        self._client: redis.Redis | None = None

    def __call__(self, queue: str) -> int:
        if self.url.startswith("filesystem"):
            # kombu's filesystem transport: a file "<time>_<uuid>.<queue>.msg" per message, until taken.
            if not self.folder.is_dir():
                return 0
            return sum(1 for path in self.folder.iterdir() if path.name.partition(".")[2] == f"{queue}.msg")
        if self.url.startswith(("redis://", "rediss://", "unix://")):
            return self._redis_depth(queue)
        raise NotImplementedError(f"queue depth of a {self.url.split(':', 1)[0]} broker")

    def _redis_depth(self, queue: str) -> int:
        from kombu.transport.redis import PRIORITY_STEPS, Channel  # Celery's transport: only when a Redis broker

        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_timeout=3, socket_connect_timeout=3)
        # A list per priority step: the queue's name, then "<name>\x06\x16<priority>" for the others.
        keys = [self.prefix + queue + (f"{Channel.sep}{step}" if step else "") for step in PRIORITY_STEPS]
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return sum(int(length) for length in pipe.execute())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# --- the collector -----------------------------------------------------------------------------------


class ServiceMetrics(Collector):
    """Collects the metrics above at each scrape (``/metrics`` runs in a thread: the queries do not block
    the event loop)."""

    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.factory: sessionmaker[Session] = runtime.factory
        self.queue_depth = QueueDepth(runtime.settings)
        self.heartbeats: Heartbeats = heartbeats_for(runtime.settings)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "finetune_metrics_source_up", "Whether a source answered this scrape (1) or not (0).", labels=["source"]
        )
        sources: dict[str, Callable[[], list[Metric]]] = {
            "database": self._database,
            "broker": self._broker,
            "heartbeats": self._heartbeats,
        }
        for source, gather in sources.items():
            try:
                families = gather()
            except Exception as error:  # a source that is down must not take the other metrics with it
                log.warning("metrics: the %s did not answer: %s: %s", source, type(error).__name__, error)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _database(self) -> list[Metric]:
        with self.factory() as session:
            counts = job_stats.jobs_by_status(session)
            durations = job_stats.job_durations(session, DURATION_BUCKETS)
            speeds = job_stats.running_throughput(session)
        jobs = GaugeMetricFamily("finetune_jobs", "Jobs by status.", labels=["status"])
        for status, count in counts.items():
            jobs.add_metric([status], count)
        histogram = HistogramMetricFamily(
            "finetune_job_duration_seconds",
            "Finished jobs' durations, from the first start to the end, by final status.",
            labels=["status"],
        )
        for status, found in sorted(durations.items()):
            bounds = [*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf"]
            histogram.add_metric(
                [status], list(zip(bounds, [*found["buckets"], found["count"]], strict=True)), found["sum"]
            )
        throughput = GaugeMetricFamily(
            "finetune_images_per_second",
            "Training throughput of all running jobs together (images per second).",
            value=sum(speeds.values()),
        )
        return [jobs, histogram, throughput]

    def _broker(self) -> list[Metric]:
        depth = GaugeMetricFamily(
            "finetune_queue_depth", "Task messages waiting in the broker, by queue.", labels=["queue"]
        )
        for queue in QUEUES:
            depth.add_metric([queue], self.queue_depth(queue))
        return [depth]

    def _heartbeats(self) -> list[Metric]:
        now = self.heartbeats.now()
        beats = self.heartbeats.last_beats()
        last = GaugeMetricFamily(
            "finetune_worker_last_heartbeat_seconds",
            "Unix time of each worker's last heartbeat (a worker that stopped cleanly is removed).",
            labels=["worker"],
        )
        for worker, at in sorted(beats.items()):
            last.add_metric([worker], at)
        limit = alive_limit(self.settings)
        alive = GaugeMetricFamily(
            "finetune_workers_alive",
            "Workers whose last heartbeat is recent (within three heartbeat intervals).",
            value=sum(1 for at in beats.values() if now - at <= limit),
        )
        return [last, alive]

    def close(self) -> None:
        self.queue_depth.close()
        self.heartbeats.close()
