"""The observed-remove set (add-wins)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crdt_ops.clock import Dot
from crdt_ops.ops import CounterFloor, Kind, ObjType, Op
from crdt_ops.types.base import Crdt, drop_seen
from crdt_ops.types.registry import register
from crdt_ops.values import Value, value_key, value_set


@register
class ORSet(Crdt):
    """An add-wins observed-remove set.

    Concurrent semantics: each add tags its element with a fresh dot (replacing
    the dots of that element it observed); a remove deletes only the dots it
    observed, so an add concurrent with a remove of the same element wins.
    Removes leave no tombstones: causal delivery guarantees that every dot a
    remove names was delivered before it.
    """

    TYPE = ObjType.ORSET
    __slots__ = ("elements",)

    def __init__(self) -> None:
        self.elements: dict[tuple[int, Value], tuple[Value, set[Dot]]] = {}

    @property
    def value(self) -> frozenset[Value]:
        return value_set(v for v, _ in self.elements.values())

    def observed(self, element: Value = None) -> tuple[Dot, ...]:
        entry = self.elements.get(value_key(element))
        return () if entry is None else tuple(sorted(entry[1]))

    def effect(self, op: Op, origin: str, seq: int) -> None:
        key = value_key(op.value)
        entry = self.elements.get(key)
        if op.kind is Kind.SET_ADD:
            if entry is None:
                self.elements[key] = (op.value, {(origin, seq)})
                return
            entry[1].difference_update(op.observed)
            entry[1].add((origin, seq))
        elif entry is not None:
            entry[1].difference_update(op.observed)
            if not entry[1]:
                del self.elements[key]

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        for key, (_, dots) in list(self.elements.items()):
            drop_seen(dots, seen)
            if not dots:
                del self.elements[key]

    def size(self) -> int:
        return sum(len(d) for _, d in self.elements.values())
