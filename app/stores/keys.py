"""Every store key the service and the worker write, built here and nowhere else.

datasets/<dataset id>/<archive name>            an uploaded archive
datasets/<dataset id>/thumbnails.json           the console's thumbnails, made at validation
jobs/<job id>/<artifact name>                   what a job publishes (``training.artifacts``), its exports
jobs/<job id>/checkpoints/<checkpoint name>     a job's checkpoints
"""

from __future__ import annotations


def dataset_prefix(dataset_id: str) -> str:
    """Everything of one data set: deleting the prefix deletes the data set's files."""
    return f"datasets/{dataset_id}"


def dataset_archive_key(dataset_id: str, archive_name: str) -> str:
    """``archive_name``: already made store-safe (``app.services.datasets.archive_name``)."""
    return f"{dataset_prefix(dataset_id)}/{archive_name}"


def thumbnails_key(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}/thumbnails.json"


def job_artifact_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/{name}"


def checkpoint_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/checkpoints/{name}"
