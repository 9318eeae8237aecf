"""Prefixed, time-sortable ids."""

from __future__ import annotations

import re
import time

from app.ids import CROCKFORD, is_id, new_id, ulid_milliseconds


def test_ids_are_prefixed_ulids():
    for kind, prefix in [("job", "ftjob_"), ("dataset", "ds_"), ("checkpoint", "ckpt_"), ("project", "proj_")]:
        made = new_id(kind)
        assert made.startswith(prefix)
        assert re.fullmatch(f"[{CROCKFORD}]{{26}}", made.removeprefix(prefix))
        assert is_id(kind, made)
    assert not is_id("job", "ftjob_lowercase0000000000000000")


def test_ids_sort_in_the_order_they_were_made():
    made = [new_id("job") for _ in range(20_000)]  # many fall in the same millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_carry_their_time():
    before = time.time_ns() // 1_000_000
    made = new_id("job").removeprefix("ftjob_")
    after = time.time_ns() // 1_000_000
    assert before <= ulid_milliseconds(made) <= after
