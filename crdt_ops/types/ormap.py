"""The observed-remove map of nested CRDTs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crdt_ops.clock import Clock
from crdt_ops.errors import TypeConflict
from crdt_ops.ops import CounterFloor, Kind, ObjType, Op
from crdt_ops.types.base import Crdt
from crdt_ops.types.register import LWWRegister
from crdt_ops.types.registry import new_object, register
from crdt_ops.types.settled import (
    SettledRegister,
    entry_type,
    freeze,
    frozen_get,
    frozen_items,
    is_frozen,
    plain,
    unfreeze,
)


class Field:
    """One (name, type) entry of a map.

    ``presence`` holds, per origin, the last update to the field not yet
    removed; the field is visible while it is non-empty. ``first`` holds, per
    origin, its first update: it fixes the name's type for every operation
    that saw it (see :meth:`ORMap.check`). ``fixed``: the type is fixed for every
    operation to come (the field was settled once: :mod:`crdt_ops.types.settled`).
    """

    __slots__ = ("first", "fixed", "obj", "presence")

    def __init__(self, obj: Crdt, fixed: bool = False) -> None:
        self.presence: Clock = {}
        self.first: Clock = {}
        self.obj = obj
        self.fixed = fixed

    def covered_by(self, frontier: Mapping[str, int]) -> bool:
        """Whether every update this field records is covered by ``frontier``."""
        return (all(s <= frontier.get(o, 0) for o, s in self.presence.items())
                and all(s <= frontier.get(o, 0) for o, s in self.first.items()))


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
    their entries; the value shows the one of the highest type number, and an
    operation that has seen both may write that type only (:meth:`check`): the name
    stays writable, with the type its readers see.

    A field lives in ``fields`` with its metadata while some update to it may
    still be concurrent with one to come, and in ``settled``, in a compact form,
    once all are causally stable (:meth:`settle`, :mod:`crdt_ops.types.settled`);
    an update to a settled field brings it back to ``fields`` first.
    """

    TYPE = ObjType.ORMAP
    __slots__ = ("fields", "settled")

    def __init__(self) -> None:
        self.fields: dict[str, dict[ObjType, Field]] = {}
        self.settled: dict[str, Any] = {}

    @property
    def value(self) -> dict[str, Any]:
        out = {name: plain(e) for name, e in self.settled.items()}
        for name, typed in self.fields.items():
            v = _visible(typed, _ABSENT)
            if v is not _ABSENT:
                out[name] = v
        return out

    def field_value(self, name: str, default: Any = None) -> Any:
        """``self.value.get(name, default)``, computing only that field."""
        e = self.settled.get(name, _ABSENT)
        if e is not _ABSENT:
            return plain(e)
        typed = self.fields.get(name)
        return _visible(typed, default) if typed else default

    def holds(self, name: str) -> bool:
        """Whether ``name`` has an entry here, visible or not."""
        return name in self.settled or name in self.fields

    def names(self) -> list[str]:
        """Every name with an entry here, visible or not."""
        return [*self.settled, *self.fields]

    def visible(self, name: str) -> bool:
        """Whether field ``name`` is visible (some entry of it is present)."""
        if name in self.settled:
            return True
        typed = self.fields.get(name)
        return typed is not None and any(f.presence for f in typed.values())

    def get(self, name: str, type_: ObjType) -> Crdt | None:
        """The object of a visible field, or None (a settled one as a detached view)."""
        e = self.settled.get(name, _ABSENT)
        if e is not _ABSENT:
            return _view(e, type_)
        typed = self.fields.get(name)
        f = typed.get(type_) if typed else None
        return f.obj if f is not None and f.presence else None

    def locate(self, path: Sequence[str], type_: ObjType) -> Crdt | None:
        """The object at ``path`` with ``type_`` if it exists and is visible (a
        settled one as a detached, read-only view: change it by operations only)."""
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
        another type than the one the writer had seen (``seen``: what it had delivered).
        Where the writer had seen a name written with several types (concurrent writers
        gave it one each), the one it had seen is the highest type number, the one the
        value shows. The rule reads only ``seen`` and the first update of each entry, so
        every replica decides it the same way for a remote operation."""
        obj: Any = self
        last = len(path) - 1
        for d, name in enumerate(path):
            want = type_ if d == last else ObjType.ORMAP
            if is_frozen(obj):
                e = frozen_get(obj, name, _ABSENT)
                if e is _ABSENT:
                    return
            elif isinstance(obj, ORMap):
                e = obj.settled.get(name, _ABSENT)
            else:
                return
            if e is not _ABSENT:
                t = entry_type(e)
                if t != want:
                    raise _conflict(path[: d + 1], t, want)
                obj = e
                continue
            typed = obj.fields.get(name)
            if not typed:
                return
            for t, f in typed.items():
                # another type the writer had seen: ``want`` only as the higher one seen
                if t != want and _seen_by(f, seen) and (t > want
                                                      or not _seen_by(typed.get(want), seen)):
                    raise _conflict(path[: d + 1], t, want)
            entry = typed.get(want)
            obj = entry.obj if entry is not None else None

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
            if name in obj.settled:
                if updating:
                    obj.thaw(name)
                else:  # a remove below a settled map: reach it, leave its presence
                    nxt = obj.open(name, want)
                    if nxt is None:
                        return None
                    obj = nxt
                    continue
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
        if op.field in self.settled:
            self.thaw(op.field)
        typed = self.fields.get(op.field)
        if not typed:
            return
        for t, f in typed.items():
            _drop_presence(f.presence, op.seen)
            f.obj.reset(op.seen, _route(op.floors, t, 0), 0)

    def remove_floors(self, name: str) -> tuple[CounterFloor, ...]:
        """The counter amounts a remove of field ``name`` observes (per origin, as
        held here). Its dots need no list: a remove observes every update delivered
        where it is prepared (the replica's clock), which covers the field's."""
        floors: list[CounterFloor] = []
        e = self.settled.get(name, _ABSENT)
        if e is not _ABSENT:
            floors.extend(_entry_floors(e, ()))
        for f in self.fields.get(name, {}).values():
            floors.extend(f.obj.floors(()))
        return tuple(floors)

    def reset(self, seen: Mapping[str, int], floors: Sequence[CounterFloor], depth: int) -> None:
        # every settled update here is causally before the remove being applied (it
        # was stable when it settled): thawed with no presence, the reset drops it
        for name in list(self.settled):
            self.thaw(name)
        for name, typed in self.fields.items():
            mine = [f for f in floors if f.path[depth] == name]
            for t, f in typed.items():
                _drop_presence(f.presence, seen)
                f.obj.reset(seen, _route(mine, t, depth + 1), depth + 1)

    def floors(self, prefix: tuple[str, ...]) -> list[CounterFloor]:
        out: list[CounterFloor] = []
        for name, e in self.settled.items():
            out.extend(_entry_floors(e, (*prefix, name)))
        for name, typed in self.fields.items():
            for f in typed.values():
                out.extend(f.obj.floors((*prefix, name)))
        return out

    def size(self) -> int:
        return len(self.settled) + sum(
            1 + len(f.presence) + len(f.first) + f.obj.size()
            for typed in self.fields.values() for f in typed.values())

    # ------------------------------------------------------------ settling

    def thaw(self, name: str) -> None:
        """Bring settled field ``name`` back to ``fields`` (an update or a remove is
        about to change it): a field of fixed type with no presence (an update adds
        its own; a remove has observed the settled ones), whose object is the
        settled one or, for a register, an empty one (any assignment to come
        supersedes the settled one)."""
        e = self.settled.pop(name)
        t = entry_type(e)
        if t is ObjType.LWW_REGISTER:
            obj: Crdt = new_object(t)
        elif is_frozen(e):
            obj = ORMap()
            obj.settled = unfreeze(e)
        else:
            obj = e
        self.fields[name] = {t: Field(obj, fixed=True)}

    def open(self, name: str, type_: ObjType) -> ORMap | None:
        """The settled map at field ``name`` as a live object kept in ``settled``
        (a frozen one is unfrozen in place), or None if it is not a map of ``type_``."""
        e = self.settled[name]
        if type_ is not ObjType.ORMAP:
            return None
        if is_frozen(e):
            m = ORMap()
            m.settled = unfreeze(e)
            self.settled[name] = m
            return m
        return e if isinstance(e, ORMap) else None

    def child(self, name: str) -> Any:
        """The map at field ``name`` (live or settled, a frozen one as its tuple) for
        walking a path, or None."""
        e = self.settled.get(name, _ABSENT)
        if e is not _ABSENT:
            return e if is_frozen(e) or isinstance(e, ORMap) else None
        typed = self.fields.get(name)
        f = typed.get(ObjType.ORMAP) if typed else None
        return f.obj if f is not None else None

    def freezable(self) -> bool:
        """Whether every field here is settled, maps below frozen (so that a frozen map
        holds nothing left to settle)."""
        return not self.fields and not any(type(e) is ORMap for e in self.settled.values())

    def settle(self, name: str, frontier: Mapping[str, int]) -> bool:
        """Move field ``name`` to ``settled`` if every update to it is covered by
        ``frontier`` (a compaction frontier: :meth:`Stability.frontier`), freezing a
        map whose fields are all settled; returns whether it is settled now.

        A field stays live while it is removed (no presence: it keeps fixing the
        name's type, with the types below it), written with two types, or (a
        register) holds an assignment the frontier does not cover."""
        e = self.settled.get(name, _ABSENT)
        if e is not _ABSENT:
            if type(e) is ORMap and e.freezable():
                self.settled[name] = freeze(e.settled)
            return True
        typed = self.fields.get(name)
        if not typed or len(typed) != 1:
            return False
        ((_, f),) = typed.items()
        obj = f.obj
        if obj.needs_compaction():
            obj.compact(frontier)  # a register's stable losing assignments
        if not f.presence or not f.covered_by(frontier):
            return False
        if isinstance(obj, LWWRegister):
            if len(obj.entries) != 1:
                return False
            ((o, s), (_, v)), = obj.entries.items()
            if s > frontier.get(o, 0):
                return False
            entry: Any = v
        elif isinstance(obj, ORMap) and obj.freezable():
            entry = freeze(obj.settled)
        else:
            entry = obj
        del self.fields[name]
        self.settled[name] = entry
        return True


def _view(entry: Any, type_: ObjType) -> Crdt | None:
    """A settled entry as an object of ``type_`` for reading, or None if it has another."""
    if entry_type(entry) is not type_:
        return None
    if is_frozen(entry):
        m = ORMap()
        m.settled = unfreeze(entry)
        return m
    if isinstance(entry, Crdt):
        return entry
    return SettledRegister(entry)


def _entry_floors(entry: Any, prefix: tuple[str, ...]) -> list[CounterFloor]:
    """The counter amounts inside a settled entry (under ``prefix``)."""
    if is_frozen(entry):
        out: list[CounterFloor] = []
        for name, e in frozen_items(entry):
            out.extend(_entry_floors(e, (*prefix, name)))
        return out
    if isinstance(entry, Crdt):
        return entry.floors(prefix)
    return []


#: What a handle calls each type (``replica.counter(...)`` makes a PNCOUNTER), for errors.
HANDLE_NAMES = {ObjType.GCOUNTER: "gcounter", ObjType.PNCOUNTER: "counter",
                ObjType.LWW_REGISTER: "register", ObjType.MV_REGISTER: "mvregister",
                ObjType.ORSET: "set", ObjType.EWFLAG: "flag", ObjType.ORMAP: "map"}


def _seen_by(f: Field | None, seen: Mapping[str, int]) -> bool:
    """Whether field entry ``f`` fixes its type for a writer that had delivered ``seen``:
    it had seen the entry's first update (from some origin), or the entry is settled."""
    return f is not None and (f.fixed or any(s <= seen.get(o, 0) for o, s in f.first.items()))


def _conflict(path: Sequence[str], holds: ObjType, want: ObjType) -> TypeConflict:
    return TypeConflict(f"{'/'.join(path)!r} holds a {HANDLE_NAMES[holds]}, not a "
                        f"{HANDLE_NAMES[want]}")


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
