"""Closed registries: every choice a spec makes by name (optimizer, scheduler, clipping mode, freeze strategy)
is one ``{name: builder}`` table beside the code that builds it, looked up here. An unknown name is an error
that lists the valid ones, never a fall-through; a test checks each table against its spec union's tags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """``registry[name]``; a KeyError naming the ``kind`` and the valid names otherwise."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}") from None
