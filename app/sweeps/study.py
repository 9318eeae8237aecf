"""A sweep's Optuna study: where it is stored, how it samples and how it prunes.

Optuna's RDB storage keeps the study in the service's own database server, but never among the service's
tables: it creates its own tables and its own ``alembic_version`` table, which would collide with the
service's. So on PostgreSQL its connections use the schema ``optuna`` (made by migration 0008) as their
whole ``search_path``; in SQLite (the embedded mode, or a SQLite URL) it has a file of its own beside the
service's database (``finetune.db`` -> ``finetune.optuna.db``).

The study is named after the sweep. Samplers and pruners are not stored by Optuna: each process builds
them from the sweep row (``sampler_for``, ``pruner_for``), the sampler seeded by the sweep's seed and the
trial's number so that two asks never replay one draw.
"""

from __future__ import annotations

import contextlib
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.engine import make_url

from app.settings import Settings
from app.sweeps.space import Dimension

if TYPE_CHECKING:
    import optuna

OPTUNA_SCHEMA = "optuna"  # migration 0008 creates it on PostgreSQL
SQLITE_TIMEOUT_SECONDS = 30

log = logging.getLogger(__name__)


def storage_url(settings: Settings) -> str:
    """Where Optuna keeps the studies: the service's PostgreSQL database (its own schema, see
    ``_engine_kwargs``), or a SQLite file beside the service's."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() != "sqlite":
        return url.render_as_string(hide_password=False)
    database = Path(url.database or "")
    if not url.database or url.database == ":memory:":
        raise ValueError("sweeps need a SQLite database in a file (Optuna keeps its study in a file beside it)")
    return url.set(database=str(database.with_name(f"{database.stem}.optuna{database.suffix}"))).render_as_string(
        hide_password=False
    )


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    # Only the optuna schema is visible: Optuna's tables and its alembic_version are made and found there.
    return {"connect_args": {"options": f"-c search_path={OPTUNA_SCHEMA}"}, "pool_pre_ping": True}


@lru_cache(maxsize=4)
def _storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines are ours to log
    return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))


def storage_for(settings: Settings) -> optuna.storages.RDBStorage:
    """The process's RDB storage for ``settings`` (made once: it checks its schema when made)."""
    return _storage(storage_url(settings))


def sampler_for(algorithm: str, seed: int, trials_so_far: int, max_trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    draw_seed = (seed * 1_000_003 + trials_so_far) % 2**31
    if algorithm == "tpe":
        startup = max(2, min(10, max_trials // 3))  # random draws before TPE models the results
        return optuna.samplers.TPESampler(seed=draw_seed, n_startup_trials=startup)
    # random, and grid (its points are enqueued when the sweep is made: an ask takes the next one first)
    return optuna.samplers.RandomSampler(seed=draw_seed)


def pruner_for(early_stopping: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    import optuna

    if early_stopping is None:
        return optuna.pruners.NopPruner()
    if early_stopping["type"] == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=early_stopping["min_epochs"],
            reduction_factor=early_stopping["reduction_factor"],
            min_early_stopping_rate=0,
        )
    # Optuna counts the epoch as the step; pruning starts at min_epochs, after the first trial completes.
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=early_stopping["min_epochs"])


def distribution(dimension: Dimension) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dimension.is_discrete:
        return CategoricalDistribution(list(dimension.values))
    low, high = dimension.values
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if dimension.kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(float(low), float(high), log=dimension.kind == "loguniform")


def direction(mode: str) -> Literal["maximize", "minimize"]:
    return "maximize" if mode == "max" else "minimize"


def open_study(
    settings: Settings,
    name: str,
    *,
    mode: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """The sweep's study, made on first use (a retry of a sweep's creation finds it)."""
    import optuna

    return optuna.create_study(
        study_name=name,
        storage=storage_for(settings),
        direction=direction(mode),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def delete_study(settings: Settings, name: str) -> None:
    import optuna

    with contextlib.suppress(KeyError):  # never made
        optuna.delete_study(study_name=name, storage=storage_for(settings))


def finite(value: Any) -> float | None:
    """A metric as Optuna's value: None when missing or not a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
