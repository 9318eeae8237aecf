"""A trial's reports to its study (``app.sweeps.pruning.TrialReporter``) on a real Optuna study: the round trip
runs on the reporter's own thread, never the caller's (the training thread), and its verdict is taken at the
next stop check."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
from optuna.pruners import BasePruner, MedianPruner

from app.sweeps.pruning import Pruned, TrialReporter


class Watched(BasePruner):
    """Optuna's median pruner, noting the thread that asks it."""

    def __init__(self) -> None:
        self.inner = MedianPruner(n_startup_trials=1, n_warmup_steps=0)
        self.threads: set[int] = set()

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.threads.add(threading.get_ident())
        return self.inner.prune(study, trial)


def test_reports_run_off_the_callers_thread_and_the_verdict_waits_for_the_next_check(tmp_path: Path) -> None:
    pruner = Watched()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize", pruner=pruner)
    done = study.ask()
    done.report(0.9, 1)
    done.report(0.95, 2)
    study.tell(done, 0.95)
    running = study.ask()
    reporter = TrialReporter(optuna.trial.Trial(study, running._trial_id), "val_acc")

    reporter.report({"epoch": 1, "val_acc": 0.92})  # its best so far beats the median at epoch 1: trains on
    assert reporter.answer() is None
    reporter.report({"epoch": 2, "val_acc": 0.93})  # not at epoch 2: pruned
    verdict = reporter.answer()
    assert verdict == Pruned(epoch=2, objective=0.93)
    reporter.report({"epoch": 3, "val_acc": 0.0})  # a pruned trial reports no more
    assert reporter.answer() == verdict
    reporter.close()

    assert pruner.threads and threading.get_ident() not in pruner.threads
    intermediate = study.trials[running.number].intermediate_values
    assert intermediate == {1: 0.92, 2: 0.93}
