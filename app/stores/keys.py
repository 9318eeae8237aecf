"""Every store key the service and the worker write, built here and nowhere else.

datasets/<dataset id>/<archive name>            an uploaded archive
datasets/<dataset id>/thumbnails.json           the console's thumbnails, made at validation
jobs/<job id>/<export name>                     a job's exports
jobs/<job id>/attempts/<n>-<nonce>/<artifact>   what an attempt publishes (``training.artifacts``)
jobs/<job id>/attempts/<n>-<nonce>/checkpoints/<checkpoint name>    an attempt's checkpoints

An attempt writes only under its own prefix (its number and its claim's nonce: a preempted attempt hands its
number back and the next claim reuses it), so no two attempts ever write or delete the same object.
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


def attempt_prefix(job_id: str, attempt: int, nonce: str) -> str:
    return f"jobs/{job_id}/attempts/{attempt}-{nonce}"


def attempt_artifact_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}"


def attempt_checkpoint_key(prefix: str, name: str) -> str:
    return f"{prefix}/checkpoints/{name}"
