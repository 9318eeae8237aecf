"""How the client commands show API objects to a person: tables and one-line event descriptions (rich).
Scripts use ``--json`` instead, which prints the objects themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from app.client.models import (
    Dataset,
    Download,
    Job,
    JobEpoch,
    JobEvent,
    JobExport,
    JobStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

STATUS_STYLES = {
    "queued": "yellow",
    "validating": "yellow",
    "running": "cyan",
    "cancelling": "magenta",
    "pausing": "blue",
    "paused": "blue",
    "succeeded": "green",
    "ready": "green",
    "failed": "red",
    "cancelled": "magenta",
}
EPOCH_COLUMNS = [
    ("train_loss", "train loss"),
    ("train_acc", "train acc"),
    ("val_loss", "val loss"),
    ("val_acc", "val acc"),
    ("lr", "lr"),
]


PIPE_WIDTH = 200  # a table written to a file or a pipe is as wide as its content, up to this: nothing cut


def stdout_console() -> Console:
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=PIPE_WIDTH)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def transfer_bar(*, quiet: bool) -> Progress:
    """A progress bar for a long transfer, on stderr: bytes done of the total, rate, time left. Drawn only on a
    terminal and cleared at the end; ``quiet`` (``--quiet``, ``--json``) draws nothing."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
        disable=quiet,
    )


def moment(unix: int | None) -> str:
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S") if unix is not None else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def number(value: Any) -> str:
    """A metric as a person reads it: 4 significant digits, small learning rates in e-notation."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def titled(title: str, table: Table) -> Group:
    """A table under a heading (a rich title would wrap at the table's own width)."""
    return Group(Text(title, style="bold"), table)


def _fields(rows: list[tuple[str, RenderableType | str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value)
    return grid


# --- data sets ------------------------------------------------------------------------------


def datasets_table(datasets: list[Dataset]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "status", "images", "classes", "created"):
        table.add_column(column, no_wrap=column in ("id", "created"))
    for d in datasets:
        classes = str(len(d.class_names)) if d.class_names is not None else "-"
        images = str(d.num_images) if d.num_images is not None else "-"
        table.add_row(d.id, d.name, status_text(d.status), images, classes, moment(d.created_at))
    return table


def dataset_view(d: Dataset) -> RenderableType:
    rows: list[tuple[str, RenderableType | str]] = [
        ("id", d.id),
        ("name", d.name),
        ("status", status_text(d.status)),
        ("archive", f"{d.filename} ({d.bytes:,} bytes, sha256 {d.sha256[:12]}...)"),
        ("created", moment(d.created_at)),
    ]
    if d.num_images is not None:
        rows.append(("images", f"{d.num_images:,} in {len(d.class_names or [])} classes"))
    parts: list[RenderableType] = [_fields(rows)]
    if d.counts:
        counts = Table(box=None, pad_edge=False)
        splits = list(d.counts)
        counts.add_column("class")
        for split in splits:
            counts.add_column(split, justify="right")
        for name in d.class_names or sorted({c for split in d.counts.values() for c in split}):
            counts.add_row(name, *(str(d.counts[split].get(name, 0)) for split in splits))
        parts.append(titled("images per split and class", counts))
    if d.skipped_files:
        parts.append(Text(f"skipped {len(d.skipped_files)} files that are not images", style="yellow"))
    if d.error is not None:
        parts.append(Text(f"{d.error.code}: {d.error.message}", style="red"))
        if d.error.reasons != [d.error.message]:
            parts.extend(Text(f"  - {reason}") for reason in d.error.reasons)
    return Group(*parts)


# --- jobs -----------------------------------------------------------------------------------


def jobs_table(jobs: list[Job]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "status", "backbone", "epoch", "best val acc", "created"):
        table.add_column(column, no_wrap=column in ("id", "created"))
    for job in jobs:
        best = (job.metrics.best or {}).get("val_acc")
        table.add_row(
            job.id,
            job.name or "-",
            status_text(job.status),
            job.spec.backbone.name,
            f"{job.progress.epoch}/{job.progress.total_epochs}",
            number(best),
            moment(job.created_at),
        )
    return table


def job_view(job: Job) -> RenderableType:
    spec = job.spec
    weights = spec.backbone.weights or spec.backbone.init_from or "from scratch"
    progress = f"epoch {job.progress.epoch}/{job.progress.total_epochs} ({job.progress.fraction:.0%})"
    if job.progress.eta_seconds is not None and not job.is_terminal:
        progress += f", about {duration(job.progress.eta_seconds)} left"
    rows: list[tuple[str, RenderableType | str]] = [
        ("id", job.id),
        ("name", job.name or "-"),
        ("status", status_text(job.status)),
        ("backbone", f"{spec.backbone.name} ({weights})"),
        ("dataset", job.dataset or spec.data.path or "-"),
        ("optimizer", f"{spec.optimizer.name}, lr {number(spec.optimizer.lr)}; scheduler {spec.scheduler.name}"),
        ("progress", progress),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("created", moment(job.created_at)),
        ("finished", moment(job.finished_at)),
    ]
    if job.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(job.metadata.items()))))
    if job.metrics.best:
        best = job.metrics.best
        rows.append(("best epoch", f"{job.metrics.best_epoch}: " + _metric_pairs(best)))
    if job.error is not None:
        rows.append(("error", Text(f"{job.error.code}: {job.error.message}", style="red")))
    if job.result_artifacts:
        rows.append(("artifacts", ", ".join(job.result_artifacts)))
    parts: list[RenderableType] = [_fields(rows)]
    results = results_table(job)
    if results is not None:
        parts.append(results)
    return Group(*parts)


def _metric_pairs(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{key} {number(metrics[key])}" for key, _ in EPOCH_COLUMNS if key in metrics)


def epochs_table(epochs: list[JobEpoch], best_epoch: int | None = None) -> Group:
    table = Table(box=None, pad_edge=False)
    table.add_column("epoch", justify="right")
    for _, title in EPOCH_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("time", justify="right")
    for row in epochs:
        label = f"{row.epoch}*" if row.epoch == best_epoch else str(row.epoch)
        values = [number(row.metrics.get(key)) for key, _ in EPOCH_COLUMNS]
        table.add_row(label, *values, duration(row.metrics.get("epoch_seconds")))
    if best_epoch is not None:
        table.caption = "* the best epoch"
        table.caption_justify = "left"
    return titled("epochs", table)


def results_table(job: Job) -> Group | None:
    """The published weights' validation metrics, then the test set's (``test_...``), if it has one."""
    final, test = job.metrics.final or {}, job.metrics.test or {}
    if not final and not test:
        return None
    table = Table(box=None, pad_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in {**final, **test}.items():  # the final metrics may already hold the test ones
        table.add_row(key, number(value))
    return titled("results of the published weights", table)


def outcome(job: Job) -> Text:
    took = duration(job.finished_at - job.started_at) if job.finished_at and job.started_at else None
    line = Text.assemble(f"job {job.id} ", status_text(job.status), f" in {took}" if took else "")
    if job.error is not None:
        line.append(f": {job.error.code}: {job.error.message}", style="red")
    if job.status == JobStatus.SUCCEEDED and job.result_artifacts:
        line.append(f"; weights: finetune jobs download {job.id}")
    return line


# --- events ---------------------------------------------------------------------------------


def step_summary(data: dict[str, Any]) -> str:
    return (
        f"step {data.get('step')}/{data.get('total_steps')} of epoch {data.get('epoch')}: "
        f"loss {number(data.get('loss'))}, lr {number(data.get('lr'))}"
    )


def epoch_summary(data: dict[str, Any]) -> str:
    parts = [f"epoch {data.get('epoch')}:", _metric_pairs(data)]
    if "epoch_seconds" in data:
        parts.append(f"({duration(data['epoch_seconds'])})")
    return " ".join(parts)


def event_line(event: JobEvent) -> Text:
    """One line for the log: time, type, and what happened."""
    data = event.data or {}
    if event.type == "step":
        text = step_summary(data)
    elif event.type == "epoch":
        text = epoch_summary(data)
    else:
        text = event.message or str(data)
    style = {"warning": "yellow", "error": "red"}.get(event.level, "")
    stamp = datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S")
    return Text.assemble((f"{stamp} ", "dim"), (f"{event.type:<10} ", "bold"), (text, style))


def job_status_line(job: Job) -> str:
    return f"{job.id} {job.status}"


def download_line(done: Download) -> str:
    note = f", resumed {done.resumed} times" if done.resumed else ""
    return f"{done.path} ({done.bytes:,} bytes, sha256 {done.sha256} verified{note})"


def export_line(made: JobExport) -> str | None:
    """An export as ``jobs export`` reports it; None for a failed one (the command's error says why)."""
    if made.status == "succeeded" and made.card_entry is not None:
        parity = made.card_entry["parity"]
        return (
            f"{made.id} succeeded: {made.file}, max |logit difference| {parity['max_abs_diff']:.3g} on "
            f"{parity['images']} validation images (tolerance {parity['tolerance']:g})"
        )
    return f"{made.id} {made.status}" if made.error is None else None


def webhooks_table(endpoints: list[WebhookEndpoint]) -> Table:
    table = Table("id", "url", "events", "enabled", "description")
    for row in endpoints:
        table.add_row(row.id, row.url, ", ".join(row.events), "yes" if row.enabled else "no", row.description)
    return table


def deliveries_table(deliveries: list[WebhookDelivery]) -> Table:
    table = Table("id (webhook-id)", "event", "job", "status", "attempts", "last", "next retry")
    for row in deliveries:
        last = row.attempts[-1] if row.attempts else None
        shown = "" if last is None else (last.error or str(last.status_code)) + f" ({last.latency_ms} ms)"
        retry = "" if row.next_attempt_at is None or row.status != "pending" else _due(row.next_attempt_at)
        table.add_row(row.id, row.event_type, row.job_id or "", row.status, str(len(row.attempts)), shown, retry)
    return table


def _due(unix: int) -> str:
    import time

    seconds = round(unix - time.time())
    return f"in {seconds} s" if seconds > 0 else "due"
