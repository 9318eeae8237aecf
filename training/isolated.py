"""Archive validation in a child process that cannot take its host down.

``validate_in_child`` runs ``validate_dataset`` in a fresh Python (``python -m training.isolated``) with
an address-space limit (``RLIMIT_AS``) and a time limit, and that dies with its parent
(``PR_SET_PDEATHSIG``). Whatever the archive does to the child (a header that asks for gigabytes, a
decoder that loops), the caller gets a ``DatasetError`` it can record: the data set's own problems, or
``validation_crashed`` / ``validation_timeout`` naming the limit that was hit.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.dataset_check import DatasetReport, validate_dataset
from training.errors import DatasetError
from training.settings import EngineSettings

PR_SET_PDEATHSIG = 1
_OUT_OF_MEMORY_EXIT = 86


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


@dataclass(frozen=True)
class ChildLimits:
    memory_mb: int
    timeout_seconds: float


def validate_in_child(archive: Path, work_dir: Path, settings: EngineSettings, limits: ChildLimits) -> DatasetReport:
    """``validate_dataset(archive, work_dir, settings)`` in a child process bounded by ``limits``."""
    request = {
        "archive": str(archive),
        "work_dir": str(work_dir),
        "settings": settings.model_dump(mode="json"),
        "memory_bytes": limits.memory_mb << 20,
    }
    command = [sys.executable, "-m", "training.isolated"]
    try:
        done = subprocess.run(
            command,
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=limits.timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise DatasetError(
            "validation_timeout",
            [
                f"{archive.name}: validation took longer than {limits.timeout_seconds:g} s and was stopped "
                "(FT_VALIDATION_TIMEOUT_SECONDS)"
            ],
        ) from None
    if done.returncode == 0:
        answer = json.loads(done.stdout)
        if "error" in answer:
            raise DatasetError(answer["error"]["code"], answer["error"]["problems"])
        return DatasetReport(**answer["report"])
    if done.returncode == _OUT_OF_MEMORY_EXIT or done.returncode == -signal.SIGKILL:
        what = f"ran out of its memory limit of {limits.memory_mb} MiB (FT_VALIDATION_MEMORY_MB)"
    else:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        what = f"crashed (exit status {done.returncode}: {tail[0][:200]})"
    raise DatasetError("validation_crashed", [f"{archive.name}: the validator {what}; the archive was refused"])


def _child_main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    die_with_parent()
    limit = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        report = validate_dataset(
            Path(request["archive"]), Path(request["work_dir"]), EngineSettings(**request["settings"])
        )
        answer: dict[str, object] = {"report": report.to_dict()}
    except DatasetError as error:
        answer = {"error": {"code": error.code, "problems": error.problems}}
    except MemoryError:
        os._exit(_OUT_OF_MEMORY_EXIT)  # nothing more can be allocated: not even a message
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
