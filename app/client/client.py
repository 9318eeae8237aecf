# Generated from async_client.py by python -m app.client.generate: edit that file, not this one.
"""``AsyncClient`` and ``Client``: the finetune API from Python, with ``await`` and without. The two are one
text: ``client.py`` is generated from ``async_client.py`` (``python -m app.client.generate``), so a method is
written once, here; requests themselves are described in ``calls.py``, without I/O.

with Client() as client:  # FT_API_URL and FT_API_KEY, or Client(base_url, api_key)
    dataset = client.datasets.wait(client.datasets.upload("pets.zip").id)
    job = client.jobs.create({"data": {"dataset": dataset.id}, "training": {"epochs": 5}})
    for event in client.jobs.stream_events(job.id):
        print(event.message)
    client.jobs.download_weights(job.id, "pets.safetensors")

``AsyncClient`` is the same with ``async with``, ``await`` and ``async for``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from time import sleep
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx

from app.client import calls
from app.client.calls import Call, Moment, SpecInput, Statuses, SweepStatuses, UploadProgress
from app.client.config import (
    DEFAULT_TIMEOUT,
    Retry,
    default_headers,
    resolve_api_key,
    resolve_base_url,
    retryable,
    stream_timeout,
)
from app.client.downloads import PartialDownload, ProgressCallback, download_target
from app.client.errors import ApiError, unreachable
from app.client.models import (
    ArtifactList,
    Backbone,
    BackboneList,
    CheckpointList,
    Dataset,
    DatasetList,
    DatasetStatus,
    Deleted,
    Download,
    DryRun,
    EpochTable,
    EventPage,
    EventType,
    ExportList,
    Health,
    Job,
    JobCheckpoint,
    JobEvent,
    JobExport,
    JobList,
    Readiness,
    Sweep,
    SweepList,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
)
from app.client.sse import EventCursor, SSEDecoder
from app.schemas.common import ListPage

T = TypeVar("T")


class Client:
    """A client of the finetune API (``AsyncClient``: for asyncio code, its methods awaited).

    ``base_url`` and ``api_key`` default to ``FT_API_URL`` (else ``http://127.0.0.1:8000``) and
    ``FT_API_KEY``. Errors the API answers with raise ``ApiError`` subclasses; a server that cannot be
    reached raises ``ConnectionError``. Reads, cancels and creates (which carry an ``Idempotency-Key``)
    are retried after a broken connection or a 502/503/504, as ``retry`` says.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.retry = retry or Retry()
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={**default_headers(resolve_api_key(api_key)), **(headers or {})},
            timeout=self._timeout,
            transport=transport,
        )
        self._sleep: Callable[[float], None] = sleep
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.backbones = Backbones(self)
        self.webhooks = Webhooks(self)
        self.sweeps = SyncSweeps(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def healthz(self) -> Health:
        """The API process is up."""
        return self.send(calls.healthz())

    def readyz(self) -> Readiness:
        """Whether the database, broker, store (and event stream) are reachable; ``status`` says, a 503 too."""
        return self.send(calls.readyz())

    def spec_schema(self) -> dict[str, Any]:
        """The JSON schema of a job spec."""
        return self.send(calls.spec_schema())

    def send(self, call: Call[T]) -> T:
        """Send ``call``, again where ``retry`` allows, and read its answer."""
        attempt = 0
        while True:
            try:
                with ExitStack() as stack:  # the upload's file is read by httpx as the body streams
                    files = stack.enter_context(call.upload.files()) if call.upload else None
                    response = self._http.request(
                        call.method,
                        call.path,
                        params=tuple(call.params),
                        json=call.json,
                        data=dict(call.form) or None,
                        files=files,
                        headers=call.headers,
                    )
            except httpx.TransportError as error:
                if not self.retry.retry_after_error(attempt, error, call.idempotent):
                    raise unreachable(self.base_url, error) from error
                self._sleep(self.retry.delay(attempt))
            else:
                if not self.retry.retry_after_status(attempt, response.status_code, call.idempotent):
                    return call.result(response)
                self._sleep(self.retry.delay(attempt, response.headers.get("retry-after")))
            attempt += 1

    def _pages(self, fetch: Callable[[str | None], ListPage[T]]) -> Iterator[T]:
        """Every item of a cursor-paginated list, a page at a time as the iteration reaches it."""
        after: str | None = None
        while True:
            page = fetch(after)
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            after = page.last_id

    def _stream(
        self, path: str, headers: Mapping[str, str], *, long_reads: bool = False, follow: bool = False
    ) -> AbstractContextManager[httpx.Response]:
        """A streamed GET (an ``httpx`` response context manager); ``follow``: through redirects (a download's
        presigned URL; httpx drops the API key on the way to another host)."""
        timeout = stream_timeout(self._timeout) if long_reads else self._timeout
        return self._http.stream("GET", path, headers=headers, timeout=timeout, follow_redirects=follow)


class Datasets:
    """``/v1/datasets``: archives in ImageFolder layout, validated by the server after upload."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
        self,
        file: str | Path | IO[bytes],
        *,
        name: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_progress: UploadProgress | None = None,
    ) -> Dataset:
        """Stream an archive (.zip, .tar, .tar.gz...) from a path or a seekable binary file, never
        reading it whole (``on_progress(sent, size)`` after each chunk). Answers at once with status
        ``validating``; see ``wait``. A retry with the same ``idempotency_key`` (one is made if not given)
        returns the same data set."""
        return self._client.send(
            calls.upload_dataset(
                file, name=name, filename=filename, idempotency_key=idempotency_key, on_progress=on_progress
            )
        )

    def list(
        self, *, status: DatasetStatus | str | None = None, after: str | None = None, limit: int | None = None
    ) -> DatasetList:
        """One page, newest first; pass a page's ``last_id`` as ``after`` for the next."""
        return self._client.send(calls.list_datasets(status=status, after=after, limit=limit))

    def list_all(self, *, status: DatasetStatus | str | None = None, page_size: int = 100) -> Iterator[Dataset]:
        """Every data set, newest first, fetched a page at a time as the iteration goes."""
        return self._client._pages(lambda after: self.list(status=status, after=after, limit=page_size))

    def get(self, dataset_id: str) -> Dataset:
        return self._client.send(calls.get_dataset(dataset_id))

    def delete(self, dataset_id: str) -> Deleted:
        """Refused (``Conflict``) while a queued or running job uses it."""
        return self._client.send(calls.delete_dataset(dataset_id))

    def wait(self, dataset_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Dataset:
        """Poll until validation ends: the data set, ``ready`` or ``failed`` (``error.reasons`` says why).
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.25, poll_interval)
        while True:
            dataset = self.get(dataset_id)
            if dataset.status != DatasetStatus.VALIDATING:
                return dataset
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"data set {dataset_id} is still validating after {timeout} s")
            self._client._sleep(delay)
            delay = min(delay * 2, poll_interval)


class Jobs:
    """``/v1/jobs``: submit, follow, cancel, and fetch what a job produced."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        spec: SpecInput,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a spec (a ``Spec`` or a mapping; ``data.dataset`` names a ready data set). The job
        comes back ``queued`` with its resolved spec. A retry with the same ``idempotency_key`` (one is
        made if not given) returns the same job; the same key with another body is a ``Conflict``."""
        return self._client.send(calls.create_job(spec, name=name, metadata=metadata, idempotency_key=idempotency_key))

    def validate(self, spec: SpecInput) -> DryRun:
        """The dry run: the resolved spec, parameter counts, steps and learning rates; nothing stored."""
        return self._client.send(calls.validate_job(spec))

    def list(
        self,
        *,
        status: Statuses | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: Moment | None = None,
        created_before: Moment | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> JobList:
        """One page, newest first; the filters combine (``status`` may name several)."""
        return self._client.send(
            calls.list_jobs(
                status=status,
                dataset=dataset,
                metadata=metadata,
                created_after=created_after,
                created_before=created_before,
                after=after,
                limit=limit,
            )
        )

    def list_all(
        self,
        *,
        status: Statuses | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: Moment | None = None,
        created_before: Moment | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job the filters select, newest first, fetched a page at a time as the iteration goes."""
        return self._client._pages(
            lambda after: self.list(
                status=status,
                dataset=dataset,
                metadata=metadata,
                created_after=created_after,
                created_before=created_before,
                after=after,
                limit=page_size,
            )
        )

    def get(self, job_id: str) -> Job:
        return self._client.send(calls.get_job(job_id))

    def export(self, job_id: str, format: str, *, dynamic_batch: bool = True, opset: int | None = None) -> JobExport:
        """Ask for an export of a succeeded job's weights (``onnx`` or ``torchscript``); it runs as a task:
        follow it with ``get_export``. A job that has not succeeded is a ``Conflict``."""
        return self._client.send(calls.create_export(job_id, format=format, dynamic_batch=dynamic_batch, opset=opset))

    def get_export(self, job_id: str, export_id: str) -> JobExport:
        return self._client.send(calls.get_export(job_id, export_id))

    def exports(self, job_id: str) -> ExportList:
        return self._client.send(calls.list_exports(job_id))

    def cancel(self, job_id: str) -> Job:
        """A queued job ends ``cancelled`` at once; a running one turns ``cancelling`` until its worker
        stops. A finished job is a ``Conflict``."""
        return self._client.send(calls.cancel_job(job_id))

    def pause(self, job_id: str) -> Job:
        """A queued job is held ``paused`` at once; a running one turns ``pausing`` until its worker has
        checkpointed, then ``paused``. A finished job is a ``Conflict``."""
        return self._client.send(calls.pause_job(job_id))

    def resume(self, job_id: str) -> Job:
        """A paused job is queued again and continues from its checkpoint. A job that is not paused (nor
        already resumed) is a ``Conflict``."""
        return self._client.send(calls.resume_job(job_id))

    def events(
        self,
        job_id: str,
        *,
        type: EventType | str | Iterable[EventType | str] | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> EventPage:
        """One page of events, oldest first; pass a page's ``last_seq`` as ``after`` for the next."""
        return self._client.send(calls.list_events(job_id, type=type, after=after, limit=limit))

    def list_all_events(
        self,
        job_id: str,
        *,
        type: EventType | str | Iterable[EventType | str] | None = None,
        after: int = 0,
        page_size: int = 100,
    ) -> Iterator[JobEvent]:
        """The events recorded so far, oldest first, a page at a time (``stream_events`` follows live)."""
        while True:
            page = self.events(job_id, type=type, after=after, limit=page_size)
            yield from page.data
            if not page.has_more or page.last_seq is None:
                return
            after = page.last_seq

    def stream_events(self, job_id: str, *, after: int = 0) -> Iterator[JobEvent]:
        """The job's events after seq ``after``, live, ending with its terminal status event.

        A dropped connection is resumed with ``Last-Event-ID``: no event is missed or repeated. After
        ``retry.reconnects`` reconnections in a row without an event it raises ``ConnectionError``.
        """
        client = self._client
        cursor = EventCursor(job_id, after, client.retry)
        path = calls.events_stream_path(job_id)
        while True:
            why = "the server ended the stream before the job's last event"
            try:
                with client._stream(path, cursor.headers(), long_reads=True) as response:
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code not in client.retry.statuses:
                            raise ApiError.from_response(response)
                        why = f"HTTP {response.status_code}"
                    else:
                        decoder = SSEDecoder()
                        for line in response.iter_lines():
                            sse = decoder.feed(line)
                            event = cursor.take(sse) if sse is not None else None
                            if event is not None:
                                yield event
                                if cursor.done:
                                    return
            except httpx.TransportError as error:
                if not retryable(error):
                    raise unreachable(client.base_url, error) from error
                why = str(error) or type(error).__name__
            client._sleep(cursor.failed(why))

    def wait(self, job_id: str, *, on_event: Callable[[JobEvent], None] | None = None) -> Job:
        """Follow the job to its end (``on_event`` sees each event) and return it, finished."""
        for event in self.stream_events(job_id):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    def metrics(self, job_id: str) -> EpochTable:
        """One row per completed epoch, in order."""
        return self._client.send(calls.epoch_metrics(job_id))

    def checkpoints(self, job_id: str, *, after: str | None = None, limit: int | None = None) -> CheckpointList:
        """One page, newest first."""
        return self._client.send(calls.list_checkpoints(job_id, after=after, limit=limit))

    def list_all_checkpoints(self, job_id: str, *, page_size: int = 100) -> Iterator[JobCheckpoint]:
        return self._client._pages(lambda after: self.checkpoints(job_id, after=after, limit=page_size))

    def artifacts(self, job_id: str) -> ArtifactList:
        """The files the job produced (weights, model card...), each with its size and sha256."""
        return self._client.send(calls.list_artifacts(job_id))

    def download_artifact(
        self,
        job_id: str,
        name: str,
        dest: str | Path,
        *,
        sha256: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Download:
        """Download one artifact to ``dest`` (a file, or a folder to put ``name`` in), resuming after a
        broken connection and checking its sha256; ``sha256`` (from ``artifacts``) pins the file and
        lets a ``.part`` left by an interrupted run resume."""
        target = download_target(dest, name)
        return self._download(calls.artifact_path(job_id, name), target, sha256, on_progress)

    def download_weights(
        self,
        job_id: str,
        dest: str | Path,
        *,
        sha256: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Download:
        """The fine-tuned weights (safetensors) of a succeeded job; as ``download_artifact``."""
        target = download_target(dest, f"{job_id}.safetensors")
        return self._download(calls.weights_path(job_id), target, sha256, on_progress)

    def _download(self, path: str, dest: Path, sha256: str | None, on_progress: ProgressCallback | None) -> Download:
        client = self._client
        partial = PartialDownload(dest, client.retry, sha256)
        while True:
            why = "the body ended early"
            try:
                with client._stream(path, partial.headers(), follow=True) as response:
                    if response.status_code >= 400:
                        response.read()
                    if response.status_code in client.retry.statuses:
                        why = f"HTTP {response.status_code}"
                    elif partial.begin(response):
                        with partial.open() as file:
                            for chunk in response.iter_raw():
                                partial.write(file, chunk)
                                if on_progress is not None:
                                    on_progress(partial.offset, partial.total)
                        partial.body_ended()
            except httpx.TransportError as error:
                if not retryable(error):
                    raise unreachable(client.base_url, error) from error
                why = str(error) or type(error).__name__
            if partial.complete:
                return partial.finish()
            client._sleep(partial.reconnects.next_delay(why))


class Backbones:
    """``/v1/backbones``: the torchvision classifiers the server can fine-tune."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> BackboneList:
        return self._client.send(calls.list_backbones())

    def get(self, name: str) -> Backbone:
        return self._client.send(calls.get_backbone(name))


class Webhooks:
    """``/v1/webhooks``: endpoints that receive the project's job events, signed (Standard Webhooks)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, url: str, events: Iterable[str], *, description: str = "") -> WebhookEndpointWithSecret:
        """The endpoint with its signing secret: shown this once."""
        return self._client.send(calls.create_webhook(url, events, description))

    def list(self, *, after: str | None = None, limit: int | None = None) -> WebhookEndpointList:
        return self._client.send(calls.list_webhooks(after=after, limit=limit))

    def list_all(self, *, page_size: int = 100) -> Iterator[WebhookEndpoint]:
        return self._client._pages(lambda after: self.list(after=after, limit=page_size))

    def get(self, webhook_id: str) -> WebhookEndpoint:
        return self._client.send(calls.get_webhook(webhook_id))

    def delete(self, webhook_id: str) -> Deleted:
        return self._client.send(calls.delete_webhook(webhook_id))

    def rotate_secret(self, webhook_id: str) -> WebhookEndpointWithSecret:
        return self._client.send(calls.rotate_webhook_secret(webhook_id))

    def deliveries(
        self, webhook_id: str, *, status: str | None = None, after: str | None = None, limit: int | None = None
    ) -> WebhookDeliveryList:
        """One page of the endpoint's deliveries, newest first, with their attempts."""
        return self._client.send(calls.list_webhook_deliveries(webhook_id, status=status, after=after, limit=limit))

    def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        return self._client.send(calls.redeliver_webhook(webhook_id, delivery_id))


class SyncSweeps:
    """``/v1/sweeps``: hyperparameter searches whose trials are jobs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> Sweep:
        return self._client.send(calls.create_sweep(body, idempotency_key=idempotency_key))

    def list(
        self, *, status: SweepStatuses | None = None, after: str | None = None, limit: int | None = None
    ) -> SweepList:
        """One page, newest first; ``status`` may name several."""
        return self._client.send(calls.list_sweeps(status=status, after=after, limit=limit))

    def list_all(self, *, status: SweepStatuses | None = None, page_size: int = 100) -> Iterator[Sweep]:
        return self._client._pages(lambda after: self.list(status=status, after=after, limit=page_size))

    def get(self, sweep_id: str) -> Sweep:
        return self._client.send(calls.get_sweep(sweep_id))

    def cancel(self, sweep_id: str) -> Sweep:
        return self._client.send(calls.cancel_sweep(sweep_id))
