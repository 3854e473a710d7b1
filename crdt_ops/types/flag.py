"""The enable-wins flag."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crdt_ops.clock import Dot
from crdt_ops.ops import CounterFloor, Kind, ObjType, Op
from crdt_ops.types.base import Crdt, drop_seen
from crdt_ops.types.registry import register
from crdt_ops.values import Value


@register
class EWFlag(Crdt):
    """An enable-wins boolean flag.

    Concurrent semantics: an enable adds a fresh dot (replacing the ones it
    observed), a disable removes the dots it observed; the flag is on while any
    dot remains, so an enable concurrent with a disable wins.
    """

    TYPE = ObjType.EWFLAG
    __slots__ = ("dots",)

    def __init__(self) -> None:
        self.dots: set[Dot] = set()

    @property
    def value(self) -> bool:
        return bool(self.dots)

    def observed(self, element: Value = None) -> tuple[Dot, ...]:
        return tuple(sorted(self.dots))

    def effect(self, op: Op, origin: str, seq: int) -> None:
        self.dots.difference_update(op.observed)
        if op.kind is Kind.FLAG_ENABLE:
            self.dots.add((origin, seq))

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        drop_seen(self.dots, seen)

    def size(self) -> int:
        return len(self.dots)
