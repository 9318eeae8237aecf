"""``finetune sweeps submit|get|list|cancel``: hyperparameter sweeps, with a live table of their trials."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from app.statuses import SweepStatus
from cli.options import GlobalOptions, json_option, pass_options

if TYPE_CHECKING:
    from rich.console import Group, RenderableType
    from rich.table import Table

    from app.client import Client
    from app.client.models import Sweep

POLL_SECONDS = 2.0
SWEEP_STATUSES = [status.value for status in SweepStatus]


@click.group()
def sweeps() -> None:
    """Hyperparameter sweeps: trials sampled and pruned by Optuna, each an ordinary job."""


@sweeps.command("submit")
@click.argument("sweep_file", metavar="SWEEP", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", "dataset_id", help="Train every trial on this uploaded data set (ds_...).")
@click.option("--follow/--no-follow", default=False, help="Show the trials live until the sweep ends.")
@json_option
@pass_options
def submit(options: GlobalOptions, sweep_file: Path, dataset_id: str | None, follow: bool) -> None:
    """Submit the sweep in SWEEP (YAML or JSON: spec, space, algorithm, objective, max_trials, max_parallel,
    early_stopping; see examples/sweep.yaml)."""
    from cli.specs import read_spec, with_dataset

    body: dict[str, Any] = read_spec(sweep_file)
    if dataset_id is not None:
        body["spec"] = with_dataset(dict(body.get("spec") or {}), dataset_id)
    with options.client() as client:
        sweep = client.sweeps.create(body)
        if follow and not options.json:
            sweep = _follow(client, sweep)
    _show(options, sweep)


@sweeps.command("get")
@click.argument("sweep_id")
@click.option("--follow/--no-follow", default=False, help="Show the trials live until the sweep ends.")
@json_option
@pass_options
def get(options: GlobalOptions, sweep_id: str, follow: bool) -> None:
    """A sweep: its trials (parameters, objective, status) and the best one."""
    with options.client() as client:
        sweep = client.sweeps.get(sweep_id)
        if follow and not options.json:
            sweep = _follow(client, sweep)
    _show(options, sweep)


@sweeps.command("list")
@click.option("--status", type=click.Choice(SWEEP_STATUSES), multiple=True, help="Only these statuses (repeatable).")
@json_option
@pass_options
def list_sweeps(options: GlobalOptions, status: tuple[str, ...]) -> None:
    """The project's sweeps, newest first."""
    with options.client() as client:
        rows = list(client.sweeps.list_all(status=status or None))
    options.show(rows, sweep_list_table)


def sweep_list_table(rows: list[Sweep]) -> Table:
    from rich.table import Table

    table = Table("id", "name", "status", "algorithm", "trials", "best")
    for row in rows:
        best = f"{row.best_trial.objective:.4g}" if row.best_trial and row.best_trial.objective is not None else "-"
        table.add_row(row.id, row.name or "", row.status, row.algorithm, f"{len(row.trials)}/{row.max_trials}", best)
    return table


@sweeps.command("cancel")
@click.argument("sweep_id")
@json_option
@pass_options
def cancel(options: GlobalOptions, sweep_id: str) -> None:
    """No more trials; the queued and running ones are cancelled."""
    with options.client() as client:
        sweep = client.sweeps.cancel(sweep_id)
    _show(options, sweep)


def _show(options: GlobalOptions, sweep: Sweep) -> None:
    options.show(sweep, sweep_view)


def sweep_view(sweep: Sweep) -> Group:
    """The trials' table, and a line for the best trial."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [trial_table(sweep)]
    if sweep.best_trial is not None:
        best = sweep.best_trial
        parts.append(Text(f"best: trial {best.number} ({best.job_id}), {_params(best.params)}"))
    return Group(*parts)


def _follow(client: Client, sweep: Sweep) -> Sweep:
    """Redraw the trial table every few seconds until the sweep is no longer running."""
    from rich.live import Live

    with Live(trial_table(sweep), refresh_per_second=4, transient=True) as live:
        while sweep.status == "running":
            time.sleep(POLL_SECONDS)
            sweep = client.sweeps.get(sweep.id)
            live.update(trial_table(sweep))
    return sweep


def trial_table(sweep: Sweep) -> Table:
    from rich.table import Table

    metric = sweep.objective.metric
    title = (
        f"{sweep.id} {sweep.status}: {len(sweep.trials)}/{sweep.max_trials} trials, {metric} ({sweep.objective.mode})"
    )
    table = Table("trial", "job", "status", "epochs", metric, "parameters", title=title)
    best = sweep.best_trial.number if sweep.best_trial else None
    for trial in sweep.trials:
        objective = f"{trial.objective:.4g}" if trial.objective is not None else "-"
        mark = " *" if trial.number == best else ""
        table.add_row(
            f"{trial.number}{mark}", trial.job_id, trial.status, str(trial.epochs), objective, _params(trial.params)
        )
    return table


def _params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{path}={value:.3g}" if isinstance(value, float) else f"{path}={value}" for path, value in params.items()
    )
