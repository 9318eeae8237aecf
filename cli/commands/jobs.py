"""``finetune jobs submit|list|get|cancel|pause|resume|logs|download``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    GlobalOptions,
    fail,
    json_option,
    pass_options,
    quiet_option,
)

if TYPE_CHECKING:
    from app.client import Client
    from app.client.models import Job
    from cli.follow import LineMode

JOB_STATUSES = ["queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"]


@click.group()
def jobs() -> None:
    """Submit, follow and download fine-tuning jobs."""


@jobs.command("submit")
@click.argument("spec_file", metavar="SPEC", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset", default=None, help="Train on this uploaded data set (ds_...): sets data.dataset, drops data.path."
)
@click.option("--name", default=None, help="A name to tell the job by.")
@click.option("--metadata", "metadata_pairs", multiple=True, metavar="KEY=VALUE", help="A label (repeatable).")
@click.option("--wait", is_flag=True, help="Follow the job to its end: exit 0 if it succeeded, 1 if not.")
@json_option
@pass_options
def submit(
    options: GlobalOptions,
    spec_file: Path,
    dataset: str | None,
    name: str | None,
    metadata_pairs: tuple[str, ...],
    wait: bool,
) -> None:
    """Submit a spec.

    SPEC is a YAML or JSON file, as `python -m training run` reads it; with --dataset, the examples/ specs
    (which name a local data.path) train on an uploaded data set."""
    from cli.output import job_status_line, stderr_console
    from cli.specs import parse_metadata, read_spec, with_dataset

    spec = read_spec(spec_file)
    if dataset is not None:
        spec = with_dataset(spec, dataset)
    metadata = parse_metadata(metadata_pairs) or None
    with options.client() as client:
        job = client.jobs.create(spec, name=name, metadata=metadata)
        if not wait:
            options.show(job, job_status_line)
            return
        stderr_console().print(f"submitted {job.id}: following it (Ctrl-C stops following, not the job)")
        _follow_to_end(options, client, job, line_mode="none" if options.json else "text")


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES), multiple=True, help="Only these statuses (repeatable).")
@click.option("--dataset", default=None, help="Only jobs on this data set.")
@click.option("--metadata", "metadata_pairs", multiple=True, metavar="KEY=VALUE", help="Only jobs with this label.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many.")
@click.option("--all", "show_all", is_flag=True, help="Every matching job (pages through the whole list).")
@json_option
@pass_options
def list_jobs(
    options: GlobalOptions,
    status: tuple[str, ...],
    dataset: str | None,
    metadata_pairs: tuple[str, ...],
    limit: int,
    show_all: bool,
) -> None:
    """List jobs, newest first."""
    from itertools import islice

    from cli.output import jobs_table
    from cli.specs import parse_metadata

    metadata = parse_metadata(metadata_pairs) or None
    with options.client() as client:
        found = client.jobs.list_all(
            status=status or None, dataset=dataset, metadata=metadata, page_size=100 if show_all else min(limit, 100)
        )
        rows = list(found if show_all else islice(found, limit))
    options.show(rows, jobs_table)


@jobs.command("get")
@click.argument("job_id")
@json_option
@pass_options
def get_job(options: GlobalOptions, job_id: str) -> None:
    """Show a job: status, progress, metrics, error, artifacts."""
    from cli.output import job_view

    with options.client() as client:
        job = client.jobs.get(job_id)
    options.show(job, job_view)


def _change_status(options: GlobalOptions, job_id: str, action: Literal["cancel", "pause", "resume"]) -> None:
    """Cancel, pause or resume a job through the client and print its new status (or the job, with --json)."""
    from cli.output import job_status_line

    with options.client() as client:
        job = getattr(client.jobs, action)(job_id)
    options.show(job, job_status_line)


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@pass_options
def cancel_job(options: GlobalOptions, job_id: str) -> None:
    """Cancel a job.

    A queued job is cancelled at once; a running one stops at its worker's next step."""
    _change_status(options, job_id, "cancel")


@jobs.command("pause")
@click.argument("job_id")
@json_option
@pass_options
def pause_job(options: GlobalOptions, job_id: str) -> None:
    """Pause a job.

    A queued job is held at once; a running one checkpoints at its worker's next step and turns paused,
    freeing the worker. `finetune jobs resume` continues it from that checkpoint."""
    _change_status(options, job_id, "pause")


@jobs.command("resume")
@click.argument("job_id")
@json_option
@pass_options
def resume_job(options: GlobalOptions, job_id: str) -> None:
    """Resume a paused job: it is queued again and continues from the checkpoint it paused at."""
    _change_status(options, job_id, "resume")


@jobs.command("logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Follow live to the job's end: exit 0 if it succeeded, 1 if not.")
@json_option
@pass_options
def logs(options: GlobalOptions, job_id: str, follow: bool) -> None:
    """Print a job's events; -f follows it live.

    Status changes, epochs, steps, checkpoints and warnings, one a line (JSON lines with --json). With -f,
    a live progress bar on a terminal and a summary table at the end."""
    import json

    from cli.output import event_line, stdout_console

    with options.client() as client:
        if follow:
            job = client.jobs.get(job_id)
            _follow_to_end(options, client, job, line_mode="jsonl" if options.json else "text")
            return
        out = stdout_console()
        for event in client.jobs.list_all_events(job_id):
            if options.json:
                click.echo(json.dumps(event.model_dump(mode="json")))
            else:
                out.print(event_line(event), soft_wrap=True)


@jobs.command("download")
@click.argument("job_id")
@click.option("--artifact", default="model.safetensors", show_default=True, help="Which of the job's files.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="A file or folder to write to (default: ./<job>.safetensors for the weights, ./<artifact> otherwise).",
)
@json_option
@quiet_option
@pass_options
def download(options: GlobalOptions, job_id: str, artifact: str, out: Path | None) -> None:
    """Download a job's weights or another artifact.

    Resumes after a broken connection (and from a .part an interrupted run left); the sha256 is checked."""
    from app.client.errors import NotFound
    from cli.output import download_line, transfer_bar

    default_name = f"{job_id}.safetensors" if artifact == "model.safetensors" else Path(artifact).name
    target = out or Path(default_name)
    if target.is_dir():
        target = target / default_name
    with options.client() as client:
        listed = {a.name: a for a in client.jobs.artifacts(job_id).data}
        if artifact not in listed:
            choices = ", ".join(sorted(listed)) or "none yet"
            raise NotFound(404, "not_found", f"job {job_id} has no artifact {artifact!r} (it has: {choices})")
        expected = listed[artifact]
        with transfer_bar(quiet=options.hide_progress) as bar:
            task = bar.add_task(f"downloading {artifact}", total=expected.bytes)
            done = client.jobs.download_artifact(
                job_id,
                artifact,
                target,
                sha256=expected.sha256,
                on_progress=lambda written, _total: bar.update(task, completed=written),
            )
    options.show(done, download_line)


@jobs.command("export")
@click.argument("job_id")
@click.option("--format", "export_format", type=click.Choice(["onnx", "torchscript"]), required=True)
@click.option("--static-batch", is_flag=True, help="ONNX: a fixed batch of 32 (default: any batch size).")
@click.option("--opset", type=click.IntRange(min=1), default=None, help="ONNX opset (default 18).")
@click.option("--wait", is_flag=True, help="Wait for the export: exit 0 if it passed its parity check, 1 if not.")
@click.option("--poll", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds between polls.")
@json_option
@pass_options
def export(
    options: GlobalOptions,
    job_id: str,
    export_format: str,
    static_batch: bool,
    opset: int | None,
    wait: bool,
    poll: float,
) -> None:
    """Export a succeeded job's weights to ONNX or TorchScript.

    The export is checked before it is published (the exported model and PyTorch on 32 validation images,
    max |logit difference| at most 1e-4 in fp32); then `finetune jobs download JOB --artifact model.onnx`."""
    import time

    from cli.output import export_line

    with options.client() as client:
        made = client.jobs.export(job_id, export_format, dynamic_batch=not static_batch, opset=opset)
        while wait and made.status in ("queued", "running"):
            time.sleep(poll)
            made = client.jobs.get_export(job_id, made.id)
    options.show(made, export_line)
    if made.status == "failed" and made.error is not None:
        fail(f"{made.id} failed ({made.error.code}): {made.error.message}", EXIT_FAILED, as_json=options.json)


def _follow_to_end(options: GlobalOptions, client: Client, job: Job, *, line_mode: LineMode) -> None:
    """Follow ``job`` to its terminal event, then show the summary; exit 1 unless it succeeded."""
    from app.client.models import JobStatus
    from cli.follow import JobFollower
    from cli.output import epochs_table, outcome, results_table, stderr_console, stdout_console

    out = stdout_console()
    try:
        with JobFollower(job, line_mode=line_mode, lines=out, bar_console=stderr_console(), echo=click.echo) as view:
            for event in client.jobs.stream_events(job.id):
                view.show(event)
    except KeyboardInterrupt:
        message = (
            f"stopped following {job.id}; it goes on (finetune jobs logs -f {job.id}, finetune jobs cancel {job.id})"
        )
        fail(message, EXIT_INTERRUPTED, as_json=options.json)
    job = client.jobs.get(job.id)
    if options.json:
        if line_mode != "jsonl":
            options.emit(job)
    else:
        epochs = client.jobs.metrics(job.id).data
        if epochs:
            out.print(epochs_table(epochs, job.metrics.best_epoch))
        results = results_table(job)
        if results is not None:
            out.print(results)
        out.print(outcome(job))
    if job.status != JobStatus.SUCCEEDED:
        raise click.exceptions.Exit(EXIT_FAILED)
