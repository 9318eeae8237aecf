"""The objects the API returns, as the client parses them: the API's own response schemas (``app.schemas``
imports only pydantic, the status vocabularies and the engine's torch-free ``Spec``), and the client's own."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from app.schemas.backbones import Backbone, BackboneList, BackboneWeights
from app.schemas.common import Deleted, ErrorBody, ErrorDetail
from app.schemas.datasets import Dataset, DatasetError, DatasetList
from app.schemas.exports import ExportList, JobExport
from app.schemas.health import Health, Readiness
from app.schemas.jobs import (
    ArtifactList,
    CheckpointList,
    DryRun,
    EpochTable,
    EventPage,
    Job,
    JobArtifact,
    JobCheckpoint,
    JobEpoch,
    JobError,
    JobEvent,
    JobList,
    JobMetrics,
    JobProgress,
    LRPreview,
)
from app.statuses import TERMINAL_JOB_STATUSES, DatasetStatus, EventType, JobStatus, SweepStatus
from app.sweeps.schemas import Sweep, SweepList, SweepTrial
from app.webhooks.schemas import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
)
from training.spec import Spec

__all__ = [
    "TERMINAL_JOB_STATUSES",
    "ArtifactList",
    "Backbone",
    "BackboneList",
    "BackboneWeights",
    "CheckpointList",
    "Dataset",
    "DatasetError",
    "DatasetList",
    "DatasetStatus",
    "Deleted",
    "Download",
    "DryRun",
    "EpochTable",
    "ErrorBody",
    "ErrorDetail",
    "EventPage",
    "EventType",
    "ExportList",
    "Health",
    "Job",
    "JobArtifact",
    "JobCheckpoint",
    "JobEpoch",
    "JobError",
    "JobEvent",
    "JobExport",
    "JobList",
    "JobMetrics",
    "JobProgress",
    "JobStatus",
    "LRPreview",
    "Readiness",
    "Spec",
    "Sweep",
    "SweepList",
    "SweepStatus",
    "SweepTrial",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookEndpoint",
    "WebhookEndpointList",
    "WebhookEndpointWithSecret",
]


# --- the client's own -----------------------------------------------------------------------


class Download(BaseModel):
    """A file the client downloaded, checked and moved into place."""

    path: Path
    bytes: int
    sha256: str
    resumed: int = Field(0, description="Times the transfer resumed after a broken connection.")
