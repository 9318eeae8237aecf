"""A trial's side of pruning, in the worker: report the objective at every epoch end and ask the sweep's
pruner whether to stop. The worker then stops the run at its next step and ends the job ``pruned``.

The report and the question are a round trip to the study's database (two with the pruners that read the
other trials): they run on the reporter's own thread (``report``), while the training thread starts the
next epoch; the next step's stop check takes the answer (``answer``), waiting for it only if it is still on
its way. The run stops where it stopped when the round trip held the training thread: at the first step
after the epoch that the pruner judged.

The study is read and written through Optuna's storage (``app.sweeps.study``); the pruner is rebuilt from
the sweep's row, as Optuna does not store it. Pruning is advice: when the study cannot be reached the
trial trains on, and says so in the log.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.db.models import Job, Sweep
from app.settings import Settings
from app.sweeps import study

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialOfSweep:
    """What a worker needs to report a job's epochs to its sweep's study."""

    sweep_id: str
    number: int
    metric: str
    mode: str
    early_stopping: dict[str, Any] | None


def trial_of(session: Session, job: Job) -> TrialOfSweep | None:
    """The sweep trial ``job`` is, or None for a job that is no trial."""
    if job.sweep_id is None or job.sweep_trial is None:
        return None
    sweep = session.get(Sweep, job.sweep_id)
    if sweep is None:
        return None
    objective = sweep.objective
    return TrialOfSweep(sweep.id, job.sweep_trial, objective["metric"], objective["mode"], sweep.early_stopping)


@dataclass(frozen=True)
class Pruned:
    """The pruner's verdict on a trial: stop after ``epoch``, where the objective was ``objective``."""

    epoch: int
    objective: Any


class TrialReporter:
    """Reports one trial's epochs on a thread of its own; ``answer`` says whether the last report pruned it."""

    def __init__(self, trial: optuna.trial.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"trial-{trial.number}-report")
        self._pending: Future[Pruned | None] | None = None
        self._verdict: Pruned | None = None

    @classmethod
    def open(cls, settings: Settings, trial: TrialOfSweep) -> TrialReporter | None:
        """None when the trial has no pruner (nothing to ask) or its study cannot be reached."""
        if trial.early_stopping is None:
            return None
        import optuna

        try:
            storage = study.storage_for(settings)
            found = optuna.load_study(
                study_name=trial.sweep_id,
                storage=storage,
                pruner=study.pruner_for(trial.early_stopping),
                sampler=optuna.samplers.RandomSampler(),  # never asked to sample here
            )
            study_id = storage.get_study_id_from_name(trial.sweep_id)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            return cls(optuna.trial.Trial(found, trial_id), trial.metric)
        except Exception:
            log.warning(
                "sweep %s: its study is unreachable; trial %d runs unpruned",
                trial.sweep_id,
                trial.number,
                exc_info=True,  # why: a refused connection, a missing schema, an Optuna version's schema
            )
            return None

    def report(self, metrics: dict[str, Any]) -> None:
        """Report the epoch's objective and ask the pruner, on the reporter's thread; returns at once. One report
        at a time (an earlier one still on its way is waited for), and none once a verdict has pruned the trial."""
        if self.answer() is None:
            self._pending = self._thread.submit(self._report, dict(metrics))

    def answer(self) -> Pruned | None:
        """The pruner's verdict, waiting for the last report's while it is on its way; None: train on."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._verdict = pending.result()
        return self._verdict

    def close(self) -> None:
        """Wait for a report still on its way (the study records every epoch the trial trained), and end."""
        self._thread.shutdown(wait=True)

    def _report(self, metrics: dict[str, Any]) -> Pruned | None:
        """Report the epoch's objective (a missing or non-finite one as NaN, which the pruners stop) and ask."""
        value = study.finite(metrics.get(self.metric))
        try:
            self.trial.report(math.nan if value is None else value, int(metrics["epoch"]))
            if self.trial.should_prune():
                return Pruned(int(metrics["epoch"]), metrics.get(self.metric))
        except Exception:  # the trial was settled elsewhere, or the study is unreachable: train on
            log.warning("trial %d: could not report epoch %s", self.trial.number, metrics.get("epoch"), exc_info=True)
        return None
