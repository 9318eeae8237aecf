"""Archive validation in a child process that cannot take its host down.

``validate_in_child`` runs ``validate_dataset`` in a fresh Python (``python -m training.isolated``) with
an address-space limit (``RLIMIT_AS``) and a time limit, and that dies with its parent
(``PR_SET_PDEATHSIG``). Whatever the archive does to the child (a header that asks for gigabytes, a
decoder that loops), the caller gets a ``DatasetError`` it can record: the data set's own problems, or
``validation_crashed`` / ``validation_timeout`` naming the limit that was hit.

The memory limit counts what the validation allocates beyond the child's own start-up (its interpreter,
Pillow and numpy map about 135 MiB of address space before reading a byte, more with every BLAS thread
and library version) and its decode threads' stacks: the child sets ``RLIMIT_AS`` to what it has mapped
once imported, plus those stacks, plus the limit. So one setting means the same on every host, and a small
one cannot make every validation fail. Address space reserved per thread or core and never used is kept
out of the budget: BLAS runs one thread here (image checks do no linear algebra; OpenBLAS maps about
40 MiB per core at import, gigabytes on a many-core host), and malloc one arena (glibc reserves 64 MiB of
address space for each thread's arena).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from training.dataset_check import DatasetReport, validate_dataset
from training.decoding import decode_threads
from training.errors import DatasetError
from training.settings import EngineSettings

PR_SET_PDEATHSIG = 1
OUT_OF_MEMORY_EXIT = 86
# Read at start-up by numpy's BLAS (and OpenMP): one thread and one buffer, not one per core; by glibc's
# malloc: one arena for every thread, not a 64 MiB reservation each.
VALIDATOR_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
# Each decode thread's stack: image decoders need little (macOS gives a thread 512 KiB). glibc's 8 MiB would
# put up to 64 MiB of the budget in stacks that are reserved, not used, and an image could take that too.
_THREAD_STACK_BYTES = 2 << 20
_GUARD_BYTES = 64 << 10  # the guard page(s) below each stack, with room to spare


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
            env={**os.environ, **VALIDATOR_ENV},
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
    if done.returncode == OUT_OF_MEMORY_EXIT or done.returncode == -signal.SIGKILL:
        what = f"ran out of its memory limit of {limits.memory_mb} MiB (FT_VALIDATION_MEMORY_MB)"
    else:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        what = f"crashed (exit status {done.returncode}: {tail[0][:200]})"
    raise DatasetError("validation_crashed", [f"{archive.name}: the validator {what}; the archive was refused"])


def mapped_bytes() -> int:
    """The address space this process has mapped (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def address_space_limit(memory_bytes: int) -> int:
    """What this process has mapped, plus its decode threads' stacks, plus ``memory_bytes``."""
    threading.stack_size(_THREAD_STACK_BYTES)
    stacks = decode_threads() * (_THREAD_STACK_BYTES + _GUARD_BYTES)
    return mapped_bytes() + stacks + memory_bytes


def _child_main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    die_with_parent()
    limit = address_space_limit(int(request["memory_bytes"]))  # beyond what the imports above mapped
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        report = validate_dataset(
            Path(request["archive"]), Path(request["work_dir"]), EngineSettings(**request["settings"])
        )
        answer: dict[str, object] = {"report": report.to_dict()}
    except DatasetError as error:
        answer = {"error": {"code": error.code, "problems": error.problems}}
    except MemoryError:
        os._exit(OUT_OF_MEMORY_EXIT)  # nothing more can be allocated: not even a message
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
