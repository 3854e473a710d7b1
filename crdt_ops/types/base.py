"""What every replicated object type provides.

An object is changed only through ``effect`` (an operation prepared at its
origin and delivered in causal order), ``reset`` (the downstream part of an
observed-remove of the map field holding it) and ``compact`` (dropping
metadata no future operation can need). None of these does I/O or reads a clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from crdt_ops.ops import CounterFloor, ObjType, Op


class Crdt(ABC):
    """A replicated object: its value, the effect of operations and reset."""

    TYPE: ClassVar[ObjType]
    __slots__ = ()

    @property
    @abstractmethod
    def value(self) -> Any:
        """The plain Python view of the object."""

    @abstractmethod
    def effect(self, op: Op, origin: str, seq: int) -> None:
        """Apply the downstream effect of ``op``, whose dot is ``(origin, seq)``."""

    @abstractmethod
    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        """Undo every operation with a dot ``(o, s)``, ``s <= seen[o]`` (and, for
        counters, the observed amounts in ``floors``); later operations survive."""

    def floors(self, prefix: tuple[str, ...]) -> list[CounterFloor]:
        """The counter amounts a remove of this object observes (none but for counters)."""
        return []

    def needs_compaction(self) -> bool:
        """Whether ``compact`` could drop something."""
        return False

    def compact(self, frontier: Mapping[str, int]) -> None:
        """Drop metadata of operations covered by ``frontier``, a clock such that
        every operation concurrent with those has already been delivered here."""
        return None

    @abstractmethod
    def size(self) -> int:
        """Metadata units held (dots, entries, per-origin counts), for memory checks."""


def drop_seen(dots: set[tuple[str, int]], seen: Mapping[str, int]) -> None:
    """Remove from ``dots`` every dot covered by ``seen``."""
    for d in [d for d in dots if seen.get(d[0], 0) >= d[1]]:
        dots.discard(d)
