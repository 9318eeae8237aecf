"""A spec file as ``jobs submit`` sends it: read as ``python -m training run`` reads it (YAML, which
includes JSON), pointed at an uploaded data set with ``--dataset``, and the ``--metadata`` pairs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click


def read_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}", param_hint="SPEC") from None
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise click.BadParameter(
            f"{path}: a spec is a mapping of sections (backbone, data, ...), got {kind}", param_hint="SPEC"
        )
    return raw


def with_dataset(spec: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    """The spec training on the uploaded data set ``dataset_id``: ``data.dataset`` set, ``data.path`` dropped
    (a local path means nothing to the server)."""
    data = dict(spec.get("data") or {})
    data.pop("path", None)
    data["dataset"] = dataset_id
    return {**spec, "data": data}


def parse_metadata(pairs: Iterable[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: write metadata as key=value", param_hint="--metadata")
        metadata[key] = value
    return metadata
