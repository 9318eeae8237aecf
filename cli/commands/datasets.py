"""``finetune datasets upload|list|get``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import EXIT_FAILED, GlobalOptions, json_option, pass_options, quiet_option


@click.group()
def datasets() -> None:
    """Upload and inspect data sets.

    A data set is an archive in ImageFolder layout, validated once by the server after upload."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="A name to tell it by (default: the file's name).")
@click.option("--wait", is_flag=True, help="Wait for validation: exit 0 when ready, 1 (with the reasons) when not.")
@json_option
@quiet_option
@pass_options
def upload(options: GlobalOptions, path: Path, name: str | None, wait: bool) -> None:
    """Upload an archive, streamed from disk, with a progress bar (bytes, rate, time left) on a terminal.

    PATH is a .zip, .tar or .tar.gz/.tgz/.tar.xz holding train/<class>/<image> (with optional val/ and
    test/) or <class>/<image>."""
    from contextlib import nullcontext

    from app.client.models import DatasetStatus
    from cli.output import dataset_view, stderr_console, transfer_bar

    quiet = options.hide_progress
    with options.client() as client:
        with transfer_bar(quiet=quiet) as bar:
            task = bar.add_task(f"uploading {path.name}", total=path.stat().st_size)
            dataset = client.datasets.upload(
                path, name=name, on_progress=lambda sent, size: bar.update(task, completed=sent, total=size)
            )
        if wait:
            with stderr_console().status(f"validating {dataset.id}...") if not quiet else nullcontext():
                dataset = client.datasets.wait(dataset.id)
    options.show(dataset, dataset_view)
    if wait and dataset.status == DatasetStatus.FAILED:
        raise click.exceptions.Exit(EXIT_FAILED)


@datasets.command("list")
@click.option("--status", type=click.Choice(["validating", "ready", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many.")
@click.option("--all", "show_all", is_flag=True, help="Every data set (pages through the whole list).")
@json_option
@pass_options
def list_datasets(options: GlobalOptions, status: str | None, limit: int, show_all: bool) -> None:
    """List data sets, newest first."""
    from itertools import islice

    from cli.output import datasets_table

    with options.client() as client:
        found = client.datasets.list_all(status=status, page_size=min(limit, 100) if not show_all else 100)
        rows = list(found if show_all else islice(found, limit))
    options.show(rows, datasets_table)


@datasets.command("get")
@click.argument("dataset_id")
@json_option
@pass_options
def get_dataset(options: GlobalOptions, dataset_id: str) -> None:
    """Show a data set: classes, images per split, or why it failed."""
    from cli.output import dataset_view

    with options.client() as client:
        dataset = client.datasets.get(dataset_id)
    options.show(dataset, dataset_view)
