"""``client.py`` is generated from ``async_client.py``: the file in the tree is what the generator makes now."""

from __future__ import annotations

from app.client import generate


def test_the_sync_client_is_generated_from_the_async_one():
    assert generate.TARGET.read_text() == generate.generated(), "run: python -m app.client.generate"
