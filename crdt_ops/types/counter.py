"""Counters: grow-only (GCounter) and increment/decrement (PNCounter)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crdt_ops.ops import MAX_AMOUNT, CounterFloor, ObjType, Op
from crdt_ops.types.base import Crdt
from crdt_ops.types.registry import register


@register
class PNCounter(Crdt):
    """A counter of increments and decrements.

    Concurrent semantics: increments and decrements commute, so the value is
    the sum of every delivered increment minus every delivered decrement,
    whatever the order. State is kept per origin as cumulative (p, n) so that a
    map-field remove can reset exactly the amounts it observed: the value after
    a remove is what was added concurrently with it or after it. One origin's
    total of either part saturates at 2^63-1 (the local handles refuse to go
    past it), identically everywhere since an origin's operations apply in order.
    """

    TYPE = ObjType.PNCOUNTER
    __slots__ = ("_value", "floor_n", "floor_p", "n", "p")

    def __init__(self) -> None:
        self.p: dict[str, int] = {}
        self.n: dict[str, int] = {}
        self.floor_p: dict[str, int] = {}
        self.floor_n: dict[str, int] = {}
        self._value = 0

    @property
    def value(self) -> int:
        return self._value

    def effect(self, op: Op, origin: str, seq: int) -> None:
        if op.p:
            old = self.p.get(origin, 0)
            new = self.p[origin] = _saturate(old + op.p)
            self._value += new - old
        if op.n:
            old = self.n.get(origin, 0)
            new = self.n[origin] = _saturate(old + op.n)
            self._value -= new - old

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        for f in floors:
            if f.p > self.floor_p.get(f.origin, 0):
                self.floor_p[f.origin] = f.p
            if f.n > self.floor_n.get(f.origin, 0):
                self.floor_n[f.origin] = f.n
        self._recount()

    def _recount(self) -> None:
        self._value = (sum(self.p.values()) - sum(self.floor_p.values())
                       - sum(self.n.values()) + sum(self.floor_n.values()))

    def floors(self, prefix: tuple[str, ...]) -> list[CounterFloor]:
        origins = self.p.keys() | self.n.keys()
        return [CounterFloor(prefix, self.TYPE, o, self.p.get(o, 0), self.n.get(o, 0))
                for o in sorted(origins)]

    def size(self) -> int:
        return len(self.p) + len(self.n) + len(self.floor_p) + len(self.floor_n)


def _saturate(total: int) -> int:
    return total if total <= MAX_AMOUNT else MAX_AMOUNT


@register
class GCounter(PNCounter):
    """A grow-only counter: increments only (the wire rejects a decrement).

    Concurrent semantics: as PNCounter; the value never decreases except by a
    remove of the map field that holds it.
    """

    TYPE = ObjType.GCOUNTER
    __slots__ = ()
