"""Every endpoint of the API as data: a ``Call`` names the request (method, path, query, body, headers,
whether it may be sent twice) and how to read its answer. ``Client`` and ``AsyncClient`` send the same
calls, one with ``httpx.Client`` and one with ``httpx.AsyncClient``, so the two cannot disagree about
the API."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.client.errors import ApiError, ClientError
from app.client.models import (
    ArtifactList,
    Backbone,
    BackboneList,
    CheckpointList,
    Dataset,
    DatasetList,
    DatasetStatus,
    Deleted,
    DryRun,
    EpochTable,
    EventPage,
    EventType,
    ExportList,
    Health,
    Job,
    JobExport,
    JobList,
    JobStatus,
    Readiness,
    Spec,
    Sweep,
    SweepList,
    SweepStatus,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Query = list[tuple[str, str]]
SpecInput = Spec | Mapping[str, Any]
Statuses = JobStatus | str | Iterable[JobStatus | str]
SweepStatuses = SweepStatus | str | Iterable[SweepStatus | str]
Moment = datetime | int


UploadProgress = Callable[[int, int], None]  # (bytes of the file sent so far, the file's size)


@dataclass(frozen=True)
class UploadFile:
    """A file sent as the multipart field ``file``. Each attempt reads it afresh from where it started,
    in chunks (httpx streams a file object): an upload never holds the archive in memory. ``on_progress``
    hears how much of it each attempt has sent (a retry starts again from 0)."""

    source: Path | IO[bytes]
    filename: str
    start: int = 0
    on_progress: UploadProgress | None = None

    @classmethod
    def of(
        cls, source: str | Path | IO[bytes], filename: str | None = None, on_progress: UploadProgress | None = None
    ) -> UploadFile:
        if isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            return cls(path, filename or path.name, on_progress=on_progress)
        if not source.seekable():
            raise ClientError("upload a path or a seekable binary file (a retry reads it again from its start)")
        default = Path(str(getattr(source, "name", "upload"))).name
        return cls(source, filename or default, source.tell(), on_progress)

    @contextmanager
    def files(self) -> Iterator[dict[str, tuple[str, IO[bytes], str]]]:
        with ExitStack() as stack:
            if isinstance(self.source, Path):
                file: IO[bytes] = stack.enter_context(self.source.open("rb"))
            else:
                file = self.source
                file.seek(self.start)
            if self.on_progress is not None:
                file = cast(IO[bytes], ProgressReader(file, self.on_progress))
            yield {"file": (self.filename, file, "application/octet-stream")}


class ProgressReader:
    """A binary file that reports, after each read, how many of its bytes have been read (what an upload
    has sent: httpx reads the file as the body streams). httpx seeks it to its start and sizes it through
    ``fileno`` or ``seek``/``tell``, which pass through."""

    def __init__(self, file: IO[bytes], on_progress: UploadProgress) -> None:
        self._file = file
        self._on_progress = on_progress
        here = file.tell()
        self._size = file.seek(0, os.SEEK_END)
        file.seek(here)

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._on_progress(self._file.tell(), self._size)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Query = field(default_factory=list)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    upload: UploadFile | None = None
    idempotent: bool = True  # sending it twice does what sending it once does
    answers: frozenset[int] = frozenset()  # statuses besides 2xx whose body is the answer (readyz's 503)

    def result(self, response: httpx.Response) -> T:
        if response.is_success or response.status_code in self.answers:
            return self.parse(response)
        raise ApiError.from_response(response)


def model(kind: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: kind.model_validate_json(response.content)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ClientError(f"expected a JSON object from {response.request.url}, got {type(body).__name__}")
    return body


def segment(value: str) -> str:
    """A path segment, escaped: an id or a name can never reach another route."""
    return quote(value, safe="")


def new_idempotency_key() -> str:
    return f"ftc-{uuid.uuid4().hex}"


def _unix(moment: Moment) -> str:
    return str(int(moment.timestamp()) if isinstance(moment, datetime) else int(moment))


def _query(**values: str | int | None) -> Query:
    return [(name, str(value)) for name, value in values.items() if value is not None]


def _statuses(status: Statuses | SweepStatuses | None, vocabulary: type[JobStatus | SweepStatus] = JobStatus) -> Query:
    """``status`` repeated, once for each of the given statuses (checked against ``vocabulary``)."""
    if status is None:
        return []
    items = [status] if isinstance(status, str) else list(status)
    return [("status", str(vocabulary(item))) for item in items]


def spec_body(spec: SpecInput) -> dict[str, Any]:
    return spec.model_dump(mode="json") if isinstance(spec, Spec) else dict(spec)


# --- health and reference -------------------------------------------------------------------


def healthz() -> Call[Health]:
    return Call("GET", "/healthz", model(Health))


def readyz() -> Call[Readiness]:
    return Call("GET", "/readyz", model(Readiness), answers=frozenset({503}))


def spec_schema() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/spec/schema", _json_object)


def list_backbones() -> Call[BackboneList]:
    return Call("GET", "/v1/backbones", model(BackboneList))


def get_backbone(name: str) -> Call[Backbone]:
    return Call("GET", f"/v1/backbones/{segment(name)}", model(Backbone))


# --- data sets ------------------------------------------------------------------------------


def upload_dataset(
    source: str | Path | IO[bytes],
    *,
    name: str | None,
    filename: str | None,
    idempotency_key: str | None,
    on_progress: UploadProgress | None = None,
) -> Call[Dataset]:
    return Call(
        "POST",
        "/v1/datasets",
        model(Dataset),
        form={"name": name} if name is not None else {},
        upload=UploadFile.of(source, filename, on_progress),
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
    )


def list_datasets(*, status: DatasetStatus | str | None, after: str | None, limit: int | None) -> Call[DatasetList]:
    status_value = str(DatasetStatus(status)) if status is not None else None
    return Call("GET", "/v1/datasets", model(DatasetList), params=_query(status=status_value, after=after, limit=limit))


def get_dataset(dataset_id: str) -> Call[Dataset]:
    return Call("GET", f"/v1/datasets/{segment(dataset_id)}", model(Dataset))


def delete_dataset(dataset_id: str) -> Call[Deleted]:
    # Not retried once it may have reached the server: a second DELETE would answer 404 for a deletion that worked.
    return Call("DELETE", f"/v1/datasets/{segment(dataset_id)}", model(Deleted), idempotent=False)


# --- jobs -----------------------------------------------------------------------------------


def create_job(
    spec: SpecInput,
    *,
    name: str | None,
    metadata: Mapping[str, str] | None,
    idempotency_key: str | None,
) -> Call[Job]:
    body: dict[str, Any] = {"spec": spec_body(spec)}
    if name is not None:
        body["name"] = name
    if metadata is not None:
        body["metadata"] = dict(metadata)
    headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
    return Call("POST", "/v1/jobs", model(Job), json=body, headers=headers)


def validate_job(spec: SpecInput) -> Call[DryRun]:
    return Call("POST", "/v1/jobs/validate", model(DryRun), json={"spec": spec_body(spec)})  # stores nothing


def list_jobs(
    *,
    status: Statuses | None,
    dataset: str | None,
    metadata: Mapping[str, str] | None,
    created_after: Moment | None,
    created_before: Moment | None,
    after: str | None,
    limit: int | None,
) -> Call[JobList]:
    params = _statuses(status) + _query(dataset=dataset, after=after, limit=limit)
    params += [(f"metadata[{key}]", value) for key, value in (metadata or {}).items()]
    if created_after is not None:
        params.append(("created_after", _unix(created_after)))
    if created_before is not None:
        params.append(("created_before", _unix(created_before)))
    return Call("GET", "/v1/jobs", model(JobList), params=params)


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{segment(job_id)}"


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", job_path(job_id), model(Job))


def cancel_job(job_id: str) -> Call[Job]:
    # Idempotent: cancelling a cancelled (or cancelling) job changes nothing.
    return Call("POST", f"{job_path(job_id)}/cancel", model(Job))


def pause_job(job_id: str) -> Call[Job]:
    # Idempotent: pausing a paused (or pausing) job changes nothing.
    return Call("POST", f"{job_path(job_id)}/pause", model(Job))


def resume_job(job_id: str) -> Call[Job]:
    # Idempotent: resuming a job that is queued or running again changes nothing.
    return Call("POST", f"{job_path(job_id)}/resume", model(Job))


def list_events(
    job_id: str, *, type: EventType | str | Iterable[EventType | str] | None, after: int | None, limit: int | None
) -> Call[EventPage]:
    types = [] if type is None else [type] if isinstance(type, str) else list(type)
    params = [("type", str(EventType(t))) for t in types] + _query(after=after, limit=limit)
    return Call("GET", f"{job_path(job_id)}/events", model(EventPage), params=params)


def epoch_metrics(job_id: str) -> Call[EpochTable]:
    return Call("GET", f"{job_path(job_id)}/metrics", model(EpochTable))


def list_checkpoints(job_id: str, *, after: str | None, limit: int | None) -> Call[CheckpointList]:
    return Call(
        "GET", f"{job_path(job_id)}/checkpoints", model(CheckpointList), params=_query(after=after, limit=limit)
    )


def list_artifacts(job_id: str) -> Call[ArtifactList]:
    return Call("GET", f"{job_path(job_id)}/artifacts", model(ArtifactList))


def create_export(job_id: str, *, format: str, dynamic_batch: bool, opset: int | None) -> Call[JobExport]:
    # Idempotent: a second request while the first is under way is a 409; once done it exports again, the same.
    body: dict[str, Any] = {"format": format, "dynamic_batch": dynamic_batch}
    if opset is not None:
        body["opset"] = opset
    return Call("POST", f"{job_path(job_id)}/exports", model(JobExport), json=body)


def list_exports(job_id: str) -> Call[ExportList]:
    return Call("GET", f"{job_path(job_id)}/exports", model(ExportList))


def get_export(job_id: str, export_id: str) -> Call[JobExport]:
    return Call("GET", f"{job_path(job_id)}/exports/{segment(export_id)}", model(JobExport))


def events_stream_path(job_id: str) -> str:
    return f"{job_path(job_id)}/events/stream"


def artifact_path(job_id: str, name: str) -> str:
    return f"{job_path(job_id)}/artifacts/{segment(name)}"


def weights_path(job_id: str) -> str:
    return f"{job_path(job_id)}/weights"


# --- webhooks -------------------------------------------------------------------------------


def create_webhook(url: str, events: Iterable[str], description: str) -> Call[WebhookEndpointWithSecret]:
    # Not retried: a second POST would make a second endpoint with a second secret.
    body = {"url": url, "events": list(events), "description": description}
    return Call("POST", "/v1/webhooks", model(WebhookEndpointWithSecret), json=body, idempotent=False)


def list_webhooks(*, after: str | None, limit: int | None) -> Call[WebhookEndpointList]:
    return Call("GET", "/v1/webhooks", model(WebhookEndpointList), params=_query(after=after, limit=limit))


def get_webhook(webhook_id: str) -> Call[WebhookEndpoint]:
    return Call("GET", f"/v1/webhooks/{segment(webhook_id)}", model(WebhookEndpoint))


def delete_webhook(webhook_id: str) -> Call[Deleted]:
    return Call("DELETE", f"/v1/webhooks/{segment(webhook_id)}", model(Deleted), idempotent=False)


def rotate_webhook_secret(webhook_id: str) -> Call[WebhookEndpointWithSecret]:
    path = f"/v1/webhooks/{segment(webhook_id)}/rotate-secret"
    return Call("POST", path, model(WebhookEndpointWithSecret), idempotent=False)


def list_webhook_deliveries(
    webhook_id: str, *, status: str | None, after: str | None, limit: int | None
) -> Call[WebhookDeliveryList]:
    path = f"/v1/webhooks/{segment(webhook_id)}/deliveries"
    return Call("GET", path, model(WebhookDeliveryList), params=_query(status=status, after=after, limit=limit))


def redeliver_webhook(webhook_id: str, delivery_id: str) -> Call[WebhookDelivery]:
    path = f"/v1/webhooks/{segment(webhook_id)}/deliveries/{segment(delivery_id)}/redeliver"
    return Call("POST", path, model(WebhookDelivery))


# --- sweeps ---------------------------------------------------------------------------------


def create_sweep(body: Mapping[str, Any], *, idempotency_key: str | None) -> Call[Sweep]:
    """``body``: the sweep as the API takes it (spec, space, algorithm, objective, limits, early_stopping)."""
    sent = dict(body)
    if isinstance(sent.get("spec"), Spec):
        sent["spec"] = spec_body(sent["spec"])
    headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
    return Call("POST", "/v1/sweeps", model(Sweep), json=sent, headers=headers)


def list_sweeps(*, status: SweepStatuses | None, after: str | None, limit: int | None) -> Call[SweepList]:
    params = _statuses(status, SweepStatus) + _query(after=after, limit=limit)
    return Call("GET", "/v1/sweeps", model(SweepList), params=params)


def get_sweep(sweep_id: str) -> Call[Sweep]:
    return Call("GET", f"/v1/sweeps/{segment(sweep_id)}", model(Sweep))


def cancel_sweep(sweep_id: str) -> Call[Sweep]:
    return Call("POST", f"/v1/sweeps/{segment(sweep_id)}/cancel", model(Sweep))  # a repeated cancel is a no-op
