"""The observed-remove map of nested CRDTs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crdt_ops.clock import Clock
from crdt_ops.errors import TypeConflict
from crdt_ops.ops import CounterFloor, Kind, ObjType, Op
from crdt_ops.types.base import Crdt
from crdt_ops.types.registry import new_object, register


class Field:
    """One (name, type) entry of a map.

    ``presence`` holds, per origin, the last update to the field not yet
    removed; the field is visible while it is non-empty. ``first`` holds, per
    origin, its first update: it fixes the name's type for every operation
    that saw it (see :meth:`ORMap.check`).
    """

    __slots__ = ("first", "obj", "presence")

    def __init__(self, obj: Crdt) -> None:
        self.presence: Clock = {}
        self.first: Clock = {}
        self.obj = obj


@register
class ORMap(Crdt):
    """A map from names to nested CRDTs (registers, flags, counters, sets, maps).

    Concurrent semantics: updates to different fields commute; concurrent
    updates to one field merge by that field's own type. Removing a field is an
    observed remove: it resets exactly the updates it had observed (counters by
    the amounts observed), so an update concurrent with the remove survives and
    the field stays visible with only that update's effect.

    A name has one type: once an operation has seen a name written with one
    type, writing it with another is a :class:`TypeConflict` on every replica.
    Two replicas that write a name with different types concurrently both keep
    their entries; the value shows the one of the highest type number.
    """

    TYPE = ObjType.ORMAP
    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, dict[ObjType, Field]] = {}

    @property
    def value(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, typed in self.fields.items():
            v = _visible(typed, _ABSENT)
            if v is not _ABSENT:
                out[name] = v
        return out

    def field_value(self, name: str, default: Any = None) -> Any:
        """``self.value.get(name, default)``, computing only that field."""
        typed = self.fields.get(name)
        return _visible(typed, default) if typed else default

    def holds(self, name: str) -> bool:
        """Whether ``name`` has an entry here, visible or not."""
        return name in self.fields

    def names(self) -> list[str]:
        """Every name with an entry here, visible or not."""
        return list(self.fields)

    def visible(self, name: str) -> bool:
        """Whether field ``name`` is visible (some entry of it is present)."""
        typed = self.fields.get(name)
        return typed is not None and any(f.presence for f in typed.values())

    def get(self, name: str, type_: ObjType) -> Crdt | None:
        """The object of a visible field, or None."""
        typed = self.fields.get(name)
        f = typed.get(type_) if typed else None
        return f.obj if f is not None and f.presence else None

    def locate(self, path: Sequence[str], type_: ObjType) -> Crdt | None:
        """The object at ``path`` with ``type_`` if it exists and is visible."""
        obj: Crdt = self
        last = len(path) - 1
        for d, name in enumerate(path):
            if not isinstance(obj, ORMap):
                return None
            found = obj.get(name, type_ if d == last else ObjType.ORMAP)
            if found is None:
                return None
            obj = found
        return obj

    def check(self, path: Sequence[str], type_: ObjType, seen: Mapping[str, int]) -> None:
        """Raise :class:`TypeConflict` if writing ``path`` as ``type_`` writes a name with
        another type than one the writer had seen (``seen``: what it had delivered)."""
        obj: ORMap | None = self
        last = len(path) - 1
        for d, name in enumerate(path):
            if obj is None:
                return
            typed = obj.fields.get(name)
            if not typed:
                return
            want = type_ if d == last else ObjType.ORMAP
            for t, f in typed.items():
                if t != want and any(s <= seen.get(o, 0) for o, s in f.first.items()):
                    raise TypeConflict(
                        f"{'/'.join(path[: d + 1])!r} holds a {t.name}, not a {want.name}")
            entry = typed.get(want)
            nxt = entry.obj if entry is not None else None
            obj = nxt if isinstance(nxt, ORMap) else None

    def apply(self, op: Op, origin: str, seq: int) -> Crdt | None:
        """Apply ``op`` at the object its path names, creating fields on the way
        (a map remove creates nothing). Returns the target object."""
        obj: Crdt = self
        path = op.path
        last = len(path) - 1
        updating = op.kind is not Kind.MAP_REMOVE
        for d, name in enumerate(path):
            assert isinstance(obj, ORMap)
            want = op.type if d == last else ObjType.ORMAP
            typed = obj.fields.get(name)
            if typed is None:
                if not updating:
                    return None
                typed = obj.fields[name] = {}
            f = typed.get(want)
            if f is None:
                if not updating:
                    return None
                f = typed[want] = Field(new_object(want))
            if updating:
                f.presence[origin] = seq
                if origin not in f.first:
                    f.first[origin] = seq
            obj = f.obj
        obj.effect(op, origin, seq)
        return obj

    def effect(self, op: Op, origin: str, seq: int) -> None:
        typed = self.fields.get(op.field)
        if not typed:
            return
        for t, f in typed.items():
            _drop_presence(f.presence, op.seen)
            f.obj.reset(op.seen, _route(op.floors, t, 0), 0)

    def observe_remove(self, name: str) -> tuple[Clock, tuple[CounterFloor, ...]]:
        """What a remove of field ``name`` observes: the last update per origin,
        and the counter amounts inside it."""
        seen: Clock = {}
        floors: list[CounterFloor] = []
        for f in self.fields.get(name, {}).values():
            for o, s in f.presence.items():
                if s > seen.get(o, 0):
                    seen[o] = s
            floors.extend(f.obj.floors(()))
        return seen, tuple(floors)

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        for name, typed in self.fields.items():
            mine = [f for f in floors if f.path[depth] == name]
            for t, f in typed.items():
                _drop_presence(f.presence, seen)
                f.obj.reset(seen, _route(mine, t, depth + 1), depth + 1)

    def floors(self, prefix: tuple[str, ...]) -> list[CounterFloor]:
        out: list[CounterFloor] = []
        for name, typed in self.fields.items():
            for f in typed.values():
                out.extend(f.obj.floors((*prefix, name)))
        return out

    def size(self) -> int:
        return sum(1 + len(f.presence) + len(f.first) + f.obj.size()
                   for typed in self.fields.values() for f in typed.values())


def _drop_presence(presence: Clock, seen: Mapping[str, int]) -> None:
    for o in [o for o, s in presence.items() if s <= seen.get(o, 0)]:
        del presence[o]


def _route(floors: Sequence[CounterFloor], t: ObjType, depth: int) -> list[CounterFloor]:
    """Of the floors addressed to one field name, those for its entry of type
    ``t``: a counter when the floor's path ends at ``depth``, else a map below."""
    return [f for f in floors
            if (len(f.path) == depth and f.type == t)
            or (len(f.path) > depth and t == ObjType.ORMAP)]


_ABSENT = object()


def _visible(typed: dict[ObjType, Field], default: Any) -> Any:
    """The plain value of a name's visible entry (of the highest type number when
    concurrent writers gave it several), or ``default`` when none is visible."""
    if len(typed) == 1:
        for f in typed.values():
            return f.obj.value if f.presence else default
    visible = [t for t, f in typed.items() if f.presence]
    return typed[max(visible)].obj.value if visible else default
