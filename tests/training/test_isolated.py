"""The validator's memory limit counts what a validation allocates, on any host: not the address space its
start-up, its decode threads' stacks or their malloc arenas reserve (which grow with the host's cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from training.isolated import OUT_OF_MEMORY_EXIT, VALIDATOR_ENV
from training.settings import EngineSettings

REPO = Path(__file__).resolve().parents[2]
# The validator's own entry point (training.isolated), on a host of 16 cores: 8 decode threads. The pool's
# threads are counted on stderr (stdout carries the answer).
ON_16_CORES = """
import sys, training.decoding as decoding
decoding.available_cpus = lambda: 16
class Counted(decoding.ThreadPoolExecutor):
    def shutdown(self, *args, **kwargs):
        print("decode threads:", len(self._threads), file=sys.stderr)
        super().shutdown(*args, **kwargs)
decoding.ThreadPoolExecutor = Counted
from training.isolated import _child_main
sys.exit(_child_main())
"""


def image_set(root: Path, per_class: int) -> Path:
    """Enough 300 x 300 PNGs for nine chunks of 64: every one of the 8 threads decodes."""
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (300, 300), (i % 256, 40, 90)).save(root / "train" / name / f"{i:03d}.png")
    return root


def validate_on_16_cores(folder: Path, work_dir: Path) -> subprocess.CompletedProcess[bytes]:
    request = {
        "archive": str(folder),
        "work_dir": str(work_dir),
        "settings": EngineSettings().model_dump(mode="json"),
        "memory_bytes": 64 << 20,  # the smallest FT_VALIDATION_MEMORY_MB
    }
    return subprocess.run(
        [sys.executable, "-c", ON_16_CORES],
        input=json.dumps(request).encode(),
        capture_output=True,
        cwd=REPO,
        env={**os.environ, **VALIDATOR_ENV},
        timeout=300,
        check=False,
    )


def test_a_small_limit_lets_a_good_set_through_on_a_many_core_host(tmp_path):
    done = validate_on_16_cores(image_set(tmp_path / "set", per_class=300), tmp_path / "work")
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-2000:]
    answer = json.loads(done.stdout)
    assert answer["report"]["counts"]["train"] == {"cat": 300, "dog": 300}, answer
    assert "decode threads: 8" in stderr, stderr[-2000:]


def test_an_image_past_the_limit_is_still_refused_on_a_many_core_host(tmp_path):
    """The threads' stacks the budget adds are small: 144 MB to decode stays past 64 MiB with 8 threads."""
    folder = image_set(tmp_path / "set", per_class=3)
    Image.new("RGBA", (6000, 6000), (10, 200, 30, 255)).save(folder / "train" / "cat" / "huge.png")
    done = validate_on_16_cores(folder, tmp_path / "work")
    assert done.returncode == OUT_OF_MEMORY_EXIT, done.stderr.decode()[-2000:]
