"""Registers: last-writer-wins (LWWRegister) and multi-value (MVRegister)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crdt_ops.clock import Dot
from crdt_ops.ops import CounterFloor, ObjType, Op
from crdt_ops.types.base import Crdt
from crdt_ops.types.registry import register
from crdt_ops.values import Value, value_set


@register
class MVRegister(Crdt):
    """A register that keeps every concurrent assignment.

    Concurrent semantics: an assignment replaces the assignments its origin had
    observed; assignments that did not see each other are all kept, so the
    value is the frozenset of the values of the causally maximal assignments.
    """

    TYPE = ObjType.MV_REGISTER
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[Dot, Value] = {}

    @property
    def value(self) -> frozenset[Value]:
        return value_set(self.entries.values())

    def observed(self, element: Value = None) -> tuple[Dot, ...]:
        return tuple(self.entries)

    def effect(self, op: Op, origin: str, seq: int) -> None:
        for d in op.observed:
            self.entries.pop(d, None)
        self.entries[(origin, seq)] = op.value

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        for d in [d for d in self.entries if seen.get(d[0], 0) >= d[1]]:
            del self.entries[d]

    def size(self) -> int:
        return len(self.entries)


@register
class LWWRegister(Crdt):
    """A last-writer-wins register.

    Concurrent semantics: of the assignments that did not see each other, the
    one with the greatest (timestamp, origin replica id) wins; timestamps come
    from a hybrid logical clock, so an assignment made after seeing another
    always wins over it. Losing concurrent assignments are kept only until they
    are causally stable (a map-field remove may still need them), then dropped.
    """

    TYPE = ObjType.LWW_REGISTER
    __slots__ = ("_winner", "entries")

    def __init__(self) -> None:
        self.entries: dict[Dot, tuple[int, Value]] = {}
        self._winner: Dot | None = None

    @property
    def value(self) -> Value:
        w = self._winner
        return None if w is None else self.entries[w][1]

    @property
    def timestamp(self) -> int:
        w = self._winner
        return 0 if w is None else self.entries[w][0]

    def observed(self, element: Value = None) -> tuple[Dot, ...]:
        return tuple(self.entries)

    def effect(self, op: Op, origin: str, seq: int) -> None:
        entries = self.entries
        for d in op.observed:
            entries.pop(d, None)
        dot = (origin, seq)
        entries[dot] = (op.timestamp, op.value)
        w = self._winner
        if len(entries) == 1:
            self._winner = dot
        elif w is None or w not in entries:
            self._pick()
        elif (op.timestamp, origin) > (entries[w][0], w[0]):
            self._winner = dot

    def _pick(self) -> None:
        self._winner = max(self.entries, key=lambda d: (self.entries[d][0], d[0]), default=None)

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        for d in [d for d in self.entries if seen.get(d[0], 0) >= d[1]]:
            del self.entries[d]
        self._pick()

    def needs_compaction(self) -> bool:
        return len(self.entries) > 1

    def compact(self, frontier: Mapping[str, int]) -> None:
        w = self._winner
        if w is None:
            return
        for d in [d for d in self.entries if d != w and frontier.get(d[0], 0) >= d[1]]:
            del self.entries[d]

    def size(self) -> int:
        return len(self.entries)
