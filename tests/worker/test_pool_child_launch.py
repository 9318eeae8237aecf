"""The ranks start from a Celery pool child: billiard makes it a daemonic process with billiard's authkey, which
``multiprocessing`` refuses (no children for a daemon) and the stdlib's spawn cannot pickle. A billiard daemonic
process, as the prefork pool makes, launches two trivial ranks through torch's elastic launcher."""

from __future__ import annotations

import os
from typing import Any

import billiard  # type: ignore[import-untyped]
import pytest


def rank_number() -> int:
    return int(os.environ["RANK"])


def pool_child(answers: Any, lifted: bool) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from training.distributed import _free_port, _may_have_children

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
        run_id="pool-child",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    try:
        if lifted:
            with _may_have_children():
                answers.put(("ranks", elastic_launch(config, rank_number)()))
        else:
            answers.put(("ranks", elastic_launch(config, rank_number)()))
    except BaseException as error:
        answers.put(("error", repr(error)))


def launched_from_a_pool_child(lifted: bool) -> tuple[str, Any]:
    answers = billiard.Queue()
    child = billiard.Process(target=pool_child, args=(answers, lifted), daemon=True)
    child.start()
    try:
        return answers.get(timeout=300)  # type: ignore[no-any-return]
    finally:
        child.join(60)


@pytest.mark.slow
def test_a_pool_child_starts_the_ranks_only_with_its_process_record_lifted() -> None:
    assert launched_from_a_pool_child(lifted=True) == ("ranks", {0: 0, 1: 1})
    kind, message = launched_from_a_pool_child(lifted=False)
    assert kind == "error" and "daemonic processes are not allowed to have children" in message
