"""MLflow tracking of a job, from the worker (the API process never imports mlflow).

A job with ``integrations: [{type: mlflow, mlflow: {experiment, run_name, tags}}]`` gets one MLflow run,
found again by its ``finetune.job_id`` tag when a later attempt resumes the job: the resolved spec as
flattened params, every epoch's metrics at ``step = epoch``, and at the end the model card and the weights
as artifacts. The server is the operator's ``FT_MLFLOW_TRACKING_URI`` (credentials: MLflow's own
``MLFLOW_TRACKING_*`` variables).

Tracking never fails a job: a call that fails returns its reason (the publisher records a warning event),
and what was not logged stays pending and is tried again at the next epoch and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOB_TAG = "finetune.job_id"
PARAM_VALUE_MAX = 6000  # MLflow's limit on a param's value
BATCH_MAX = 100  # params or metrics per log_batch call
# MLflow's client retries a request 7 times with backoff and waits 120 s for each: minutes per call while the
# server is down, and the publisher that calls it records the job's events in order. Unless the operator set
# them: one retry, 10 s per request; what fails is logged at the next epoch anyway.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
END_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": "0.1"}``; lists as JSON."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{prefix}{key}.")
        return flat
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return {prefix.rstrip("."): text[:PARAM_VALUE_MAX]}


class MlflowTracker:
    """One job's MLflow run. Not thread-safe: the publisher thread calls it, then the runner once it drained."""

    def __init__(
        self, tracking_uri: str, job_id: str, config: dict[str, Any], spec: dict[str, Any], name: str | None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.job_id = job_id
        self.experiment = str(config["experiment"])
        self.run_name = config.get("run_name") or name or job_id
        self.tags = {**config.get("tags", {}), JOB_TAG: job_id}
        self.params = flatten(spec)
        self.run_id: str | None = None
        self.params_logged = False
        self.pending: list[dict[str, Any]] = []  # epochs not logged yet, oldest first
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            for name, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)  # read per request by MLflow's REST client
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _ensure_run(self) -> str:
        if self.run_id is not None:
            return self.run_id
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{self.job_id}'", max_results=1)
        if found:
            self.run_id = str(found[0].info.run_id)
            self.params_logged = True  # an earlier attempt logged them (the spec does not change)
        else:
            run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = str(run.info.run_id)
        return self.run_id

    def _flush(self) -> None:
        from mlflow.entities import Metric, Param

        run_id = self._ensure_run()
        if not self.params_logged:
            items = [Param(key, value) for key, value in sorted(self.params.items())]
            for start in range(0, len(items), BATCH_MAX):
                self.client.log_batch(run_id, params=items[start : start + BATCH_MAX])
            self.params_logged = True
        while self.pending:
            epoch = self.pending[0]
            stamp = int(time.time() * 1000)
            step = int(epoch["epoch"])
            metrics = [
                Metric(key, float(value), stamp, step)
                for key, value in sorted(epoch.items())
                if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
            ]
            for start in range(0, len(metrics), BATCH_MAX):
                self.client.log_batch(run_id, metrics=metrics[start : start + BATCH_MAX])
            self.pending.pop(0)

    def _attempt(self, what: str) -> str | None:
        try:
            self._flush()
        except Exception as error:  # the tracking server is down, slow, or refuses: never the job's problem
            log.warning("job %s: MLflow %s failed: %s", self.job_id, what, error)
            first = (str(error).splitlines() or [""])[0][:300]
            return f"MLflow tracking failed ({what}: {type(error).__name__}: {first}); retrying at the next epoch"
        return None

    def log_epoch(self, metrics: dict[str, Any]) -> str | None:
        """Log an epoch (and whatever is pending); the reason it failed, or None."""
        self.pending.append(metrics)
        return self._attempt(f"epoch {metrics.get('epoch')}")

    def finish(self, status: str, artifacts: Iterable[Path] = ()) -> str | None:
        """Log what is pending, the artifacts, and end the run with the job's status."""
        problem = self._attempt("the final flush")
        if problem is not None:
            return problem.replace("retrying at the next epoch", "the run is left unfinished")
        try:
            for path in artifacts:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, END_STATUS.get(status, "FINISHED"))
        except Exception as error:
            log.warning("job %s: MLflow artifacts failed: %s", self.job_id, error)
            return f"MLflow tracking failed (artifacts: {type(error).__name__}: {str(error)[:300]})"
        return None


def tracker_for(
    tracking_uri: str | None, job_id: str, integrations: list[dict[str, Any]] | None, spec: dict[str, Any], name: Any
) -> MlflowTracker | None:
    for integration in integrations or []:
        if integration.get("type") == "mlflow" and tracking_uri:
            return MlflowTracker(tracking_uri, job_id, integration["mlflow"], spec, name)
    return None
