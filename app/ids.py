"""Prefixed, time-sortable ids: ``ftjob_`` + a 26-character ULID (Crockford base32).

A ULID is 48 bits of milliseconds since the epoch then 80 random bits. Within one millisecond this
process increments the random part instead of drawing a new one, so ids made here sort in the order
they were made; ids from different processes sort by time to the millisecond.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1

PREFIXES = {
    "job": "ftjob",
    "dataset": "ds",
    "checkpoint": "ckpt",
    "event": "evt",
    "project": "proj",
    "api_key": "key",
    "artifact": "art",
    "webhook": "wh",
    "delivery": "msg",  # Standard Webhooks message ids: the webhook-id header
    "export": "exp",
    "sweep": "sweep",
}


class _UlidClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def next(self) -> int:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= self._last_ms:
                # Same millisecond (or the clock stepped back): keep the time, count up the random part.
                now_ms = self._last_ms
                self._last_random += 1
                if self._last_random > _RANDOM_MAX:  # 2**80 ids in one millisecond: borrow the next one
                    now_ms += 1
                    self._last_random = secrets.randbits(_RANDOM_BITS - 1)
            else:
                self._last_random = secrets.randbits(_RANDOM_BITS - 1)  # headroom to count up within the ms
            self._last_ms = now_ms
            return (now_ms << _RANDOM_BITS) | self._last_random


_clock = _UlidClock()


def encode_ulid(value: int) -> str:
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_ulid() -> str:
    return encode_ulid(_clock.next())


def new_id(kind: str) -> str:
    """A new id for an object of ``kind`` (a key of ``PREFIXES``): ``ftjob_01J...``."""
    return f"{PREFIXES[kind]}_{new_ulid()}"


def ulid_milliseconds(ulid: str) -> int:
    """The creation time encoded in a ULID, in milliseconds since the epoch."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def id_pattern(kind: str) -> str:
    return rf"^{PREFIXES[kind]}_[{CROCKFORD}]{{{ULID_LENGTH}}}$"


def is_id(kind: str, value: str) -> bool:
    return re.fullmatch(id_pattern(kind), value) is not None
