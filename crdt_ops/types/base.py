"""What every replicated object type provides (the contract of Shapiro et al.'s
operation-based CRDTs: *prepare* at the origin, *effect* everywhere).

``observed`` is the prepare step's reading of local state; an object is changed only
through ``effect`` (an operation prepared at its
origin and delivered in causal order), ``reset`` (the downstream part of an
observed-remove of the map field holding it) and ``compact`` (dropping
metadata no future operation can need). None of these does I/O or reads a clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from crdt_ops.clock import Dot
from crdt_ops.ops import CounterFloor, ObjType, Op
from crdt_ops.values import Value


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

    def observed(self, element: Value = None) -> tuple[Dot, ...]:
        """Prepare (at the origin, from local state): the dots an operation made here on
        this object observes, i.e. supersedes (an assignment's, a disable's, a remove's);
        ``element``: for a set, the element. Types whose operations observe nothing
        (counters) keep this default: none."""
        return ()

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
