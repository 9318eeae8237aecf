"""The file names of what a finished run publishes, in its run folder and, under the same names, as the job's
artifacts in the store (``app.stores.keys.job_artifact_key``). Torch-free: the service and the worker import it."""

from __future__ import annotations

WEIGHTS = "model.safetensors"  # the final weights
CARD = "model.json"  # the model card: how to rebuild the model and feed it; exports add their entries
METRICS = "metrics.json"  # the metrics of every epoch
CONFUSION = "confusion.json"  # the confusion matrices on the validation and test sets

PUBLISHED = (WEIGHTS, CARD, METRICS, CONFUSION)  # in the order the worker uploads them: the weights first
