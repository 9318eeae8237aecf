"""The intra-op threads a run sets: the cores the process may run on, shared among a run's ranks."""

from __future__ import annotations

import os

import pytest
import torch

from training.runtime import configure_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_cpu_affinity_shared_among_the_ranks_here():
    cores = len(os.sched_getaffinity(0))
    assert configure_threads(None) == cores == torch.get_num_threads()
    assert configure_threads(None, ranks_here=2) == max(1, cores // 2) == torch.get_num_threads()
    assert configure_threads(None, ranks_here=4 * cores) == 1  # never none


def test_a_setting_overrides_the_count():
    assert configure_threads(1) == 1 == torch.get_num_threads()
