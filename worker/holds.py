"""Test-only holds: places where a worker can be made to wait, so a fault test lands a pause exactly there.

FOR TESTS ONLY. A worker honours them only when ``FT_TEST_HOLD_AT`` names a hold point and
``FT_TEST_HOLD_DIR`` a folder; neither is a setting and production never sets them. The first time any
process reaches the named point it creates ``<dir>/<point>.reached`` and waits (at most
``FT_TEST_HOLD_SECONDS``, default 600) until ``<dir>/<point>.release`` exists; later arrivals, in this
process or another (the successor worker of the test), pass straight through.

Points: ``checkpoint_write`` (a checkpoint's bytes are in the store, not yet registered) and
``retention`` (a checkpoint the retention rule removed, about to be marked deleted and deleted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("checkpoint_write", "retention")


def hold(point: str) -> None:
    if point not in POINTS:
        raise ValueError(f"no hold point {point!r}")
    folder = os.environ.get("FT_TEST_HOLD_DIR")
    if os.environ.get("FT_TEST_HOLD_AT") != point or not folder:
        return
    try:
        fd = os.open(Path(folder) / f"{point}.reached", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # held once already: everyone after passes
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    release = Path(folder) / f"{point}.release"
    deadline = time.monotonic() + float(os.environ.get("FT_TEST_HOLD_SECONDS", "600"))
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
