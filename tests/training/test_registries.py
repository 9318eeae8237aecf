"""Each registry of choices has exactly one entry per variant that the spec accepts, and an unknown name is an
error that lists the valid ones."""

from __future__ import annotations

import pytest

from training.clipping import CLIPPERS
from training.freezing import FREEZE_STRATEGIES
from training.optim import OPTIMIZERS
from training.registry import lookup
from training.schedule import SCHEDULERS
from training.spec import UNION_TAGS


@pytest.mark.parametrize(
    ("field", "registry"),
    [("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("clipping", CLIPPERS), ("freeze", FREEZE_STRATEGIES)],
)
def test_every_variant_of_the_spec_has_one_entry(field, registry):
    assert set(registry) == UNION_TAGS[field]


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="unknown scheduler 'cosine2'; choose one of constant, step, multistep"):
        lookup(SCHEDULERS, "scheduler", "cosine2")
