"""A training worker's pool child imports torch and the engine while it waits for its job, not after the claim,
and starts no CUDA doing it (the job's GPUs are chosen later, through ``CUDA_VISIBLE_DEVICES``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.app.servers import REPO

CHILD = """
import json, sys
from pathlib import Path
from celery import signals
from app.settings import Settings
from worker.celery_app import create_celery

create_celery(Settings(home=Path(sys.argv[1]), redis_url=None), warm_training=%s)
before = "torch" in sys.modules
for _, answer in signals.worker_process_init.send(sender=None):  # what billiard sends in a new pool child
    if isinstance(answer, BaseException):
        raise answer
import torch
print(json.dumps({"before": before, "engine": "training.engine" in sys.modules, "cuda": torch.cuda.is_initialized()}))
"""


def warmed(training: bool, home: Path) -> dict[str, bool]:
    command = [sys.executable, "-c", CHILD % training, str(home)]
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_training_pool_child_imports_the_engine_before_its_job_and_starts_no_cuda(tmp_path):
    assert warmed(True, tmp_path) == {"before": False, "engine": True, "cuda": False}


def test_a_validation_only_pool_child_does_not_import_the_engine(tmp_path):
    assert warmed(False, tmp_path) == {"before": False, "engine": False, "cuda": False}
