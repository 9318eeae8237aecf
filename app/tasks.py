"""The names of the tasks the API sends, in one place: the worker defines its tasks under these names and
imports them from here. The API never imports ``worker/``; it sends by name."""

from __future__ import annotations

TRAIN_JOB = "finetune.train_job"  # args: [job_id]
VALIDATE_DATASET = "finetune.validate_dataset"  # args: [dataset_id]
DELIVER_WEBHOOK = "finetune.deliver_webhook"  # args: [delivery_id]

GPU_QUEUE = "gpu"  # training: one worker process per GPU
CPU_QUEUE = "cpu"  # data set validation and other light work

QUEUE_OF = {TRAIN_JOB: GPU_QUEUE, VALIDATE_DATASET: CPU_QUEUE, DELIVER_WEBHOOK: CPU_QUEUE}
