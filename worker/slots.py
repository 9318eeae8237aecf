"""A host's device slots: which of its devices each running job holds, so that a host with 8 GPUs runs eight
1-device jobs or one 8-device job, never both at once.

Jobs reach workers through one queue per device count (``app.dispatch.names.training_queue``); a worker that
advertises N devices (``finetune worker --devices N``) takes the queues of 1 to N devices, and so may take an
8-device job while its neighbours on the host run 1-device ones. Before a job's processes start, its pool child
claims the devices it needs here; a job that cannot have them goes back to the queue for a later try, before
it is claimed (no attempt counted).

The counter is a JSON file under ``flock``, on the host's disk (``$FT_HOME/device-slots.json``; the workers of
one host share ``FT_HOME``): each claim names its devices, the job, and the claiming process by pid and start
time. A claim is released when the job ends, whatever the ending (the task's ``finally``); a process that died
without releasing (kill -9, a crash) leaves a claim whose pid is gone, or now names another process, and the
next claim on the host frees it. The file holds device ids (``"3"``, or ``"cpu0"`` on a host without GPUs), so
workers that advertise different lists of one host's GPUs still share it correctly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SLOTS_FILE = "device-slots.json"


@dataclass(frozen=True)
class Claim:
    devices: tuple[str, ...]
    job_id: str
    pid: int
    started: str | None  # the process's start time (/proc), so that a reused pid does not keep a claim alive


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the fields after the command name, which may hold spaces


def _alive(claim: Claim) -> bool:
    try:
        os.kill(claim.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return claim.started is None or process_start(claim.pid) in (None, claim.started)


class DeviceSlots:
    """The slots of one host's devices ``devices`` (the ones this worker advertises), in the file ``path``."""

    def __init__(self, path: Path, devices: Sequence[str]) -> None:
        self.path = path
        self.devices = tuple(devices)

    @contextlib.contextmanager
    def _claims(self) -> Iterator[list[Claim]]:
        """The live claims, under an exclusive lock on the file; what the caller leaves in the list is written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                claims = self._read()
                live = [claim for claim in claims if _alive(claim)]
                for stale in set(claims) - set(live):
                    log.warning(
                        "device slots: freed %s, held by job %s for process %d, which is gone",
                        ",".join(stale.devices),
                        stale.job_id,
                        stale.pid,
                    )
                yield live
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                tmp.write_text(json.dumps([asdict(claim) for claim in live]))
                tmp.replace(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[Claim]:
        try:
            records: list[dict[str, Any]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            log.warning("device slots: %s is not JSON; starting it afresh", self.path)
            return []
        return [Claim(tuple(r["devices"]), r["job_id"], int(r["pid"]), r.get("started")) for r in records]

    def claim(self, count: int, job_id: str, pid: int | None = None) -> tuple[str, ...] | None:
        """``count`` free devices of this worker's, now held for ``job_id`` by process ``pid`` (this one); None
        when fewer are free. A process holds one claim: a second replaces its first."""
        pid = os.getpid() if pid is None else pid
        if count > len(self.devices):
            return None
        with self._claims() as claims:
            claims[:] = [claim for claim in claims if claim.pid != pid]
            held = {device for claim in claims for device in claim.devices}
            free = [device for device in self.devices if device not in held]
            if len(free) < count:
                return None
            mine = Claim(tuple(free[:count]), job_id, pid, process_start(pid))
            claims.append(mine)
            return mine.devices

    def release(self, pid: int | None = None) -> None:
        pid = os.getpid() if pid is None else pid
        with self._claims() as claims:
            claims[:] = [claim for claim in claims if claim.pid != pid]

    def held(self) -> list[Claim]:
        with self._claims() as claims:
            return list(claims)


def advertised_devices(gpus: Sequence[str], cpu_devices: int) -> list[str]:
    """The device ids a worker offers: its GPUs, or ``cpu_devices`` CPU slots (``cpu0``...) on a host without."""
    return list(gpus) if gpus else [f"cpu{i}" for i in range(cpu_devices)]
