"""Handles: typed views of one object of a replica, with its mutators.

A handle holds a path, not an object: it always reads the replica's current
state, and every mutator prepares an operation at this replica (reading the
local state it must observe: Shapiro et al.'s *prepare*) and hands it to the replica
to apply (*effect*) and send. Handles reach the replica only through :class:`Target`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from crdt_ops.clock import Dot
from crdt_ops.ops import MAX_AMOUNT, MAX_DEPTH, Kind, ObjType, Op
from crdt_ops.types import Crdt, LWWRegister, ORMap
from crdt_ops.values import Value, check_text, check_value


class Target(Protocol):
    """What a handle needs of the replica it writes to (:class:`~crdt_ops.replica.Replica`
    implements it)."""

    @property
    def replica_id(self) -> str:
        """The replica's id (a counter's per-replica total is kept under it)."""
        ...

    def locate(self, path: tuple[str, ...], type_: ObjType) -> Crdt | None:
        """The object of ``type_`` at ``path``, or None when there is none (yet)."""
        ...

    def check_type(self, path: tuple[str, ...], type_: ObjType) -> None:
        """Raise :class:`~crdt_ops.errors.TypeConflict` if ``path`` holds another type."""
        ...

    def submit(self, op: Op) -> None:
        """Apply ``op``, prepared here, and queue it to be sent (raises as a mutator)."""
        ...

    def timestamp(self) -> int:
        """A hybrid logical timestamp above every one seen here (an LWW assignment's)."""
        ...

    @property
    def clock(self) -> Mapping[str, int]:
        """Per replica, the last operation delivered here: a remove prepared here has
        observed all of them."""
        ...


class Fields:
    """The typed handles at a name: a top-level key of a replica, or a field of a map
    handle. Getting one writes nothing; it raises
    :class:`~crdt_ops.errors.TypeConflict` if the name holds another type here, and
    ValueError for an empty name (see :class:`Handle`)."""

    __slots__ = ()

    def _at(self, name: str) -> tuple[Target, tuple[str, ...]]:
        raise NotImplementedError

    def counter(self, name: str) -> CounterHandle:
        """The PN-counter (increments and decrements) at ``name``."""
        return CounterHandle(*self._at(name))

    def gcounter(self, name: str) -> GCounterHandle:
        """The grow-only counter at ``name``."""
        return GCounterHandle(*self._at(name))

    def register(self, name: str) -> RegisterHandle:
        """The last-writer-wins register at ``name``."""
        return RegisterHandle(*self._at(name))

    def mvregister(self, name: str) -> MVRegisterHandle:
        """The multi-value register at ``name``."""
        return MVRegisterHandle(*self._at(name))

    def set(self, name: str) -> SetHandle:
        """The add-wins observed-remove set at ``name``."""
        return SetHandle(*self._at(name))

    def flag(self, name: str) -> FlagHandle:
        """The enable-wins flag at ``name``."""
        return FlagHandle(*self._at(name))

    def map(self, name: str) -> MapHandle:
        """The map of named fields (nested handles) at ``name``."""
        return MapHandle(*self._at(name))



def check_name(name: object) -> str:
    """``name`` if it can be a key or a field name (a non-empty str of valid Unicode), else
    ValueError (:class:`~crdt_ops.errors.InvalidValue` for a lone surrogate)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"keys and field names are non-empty str, got {name!r}")
    check_text(name, "key")
    return name

class Handle:
    """The object at ``path`` of ``replica``, of this handle's type.

    Get handles from the replica (``replica.counter("hits")``) or from a map handle
    (``replica.map("users/ada").register("email")``), never by calling the class.
    Getting one writes nothing; it raises :class:`~crdt_ops.errors.TypeConflict` if
    the path already holds another type here, and ValueError for an empty or
    non-str key or field name, or for maps nested deeper than the wire allows.

    Every mutator applies its operation to the local replica at once (``value``
    shows it, subscribers are told, before the mutator returns) and queues it for
    the replica's ``outgoing()`` (a node sends it). A mutator raises
    :class:`~crdt_ops.errors.NotAMember` if this replica may not write yet,
    :class:`~crdt_ops.errors.Forbidden` if the replica's write policy denies the
    path, and :class:`~crdt_ops.errors.InvalidValue` for a value that cannot be
    replicated; then nothing was applied.
    """

    TYPE: ClassVar[ObjType]
    EMPTY: ClassVar[Any] = None
    __slots__ = ("_replica", "path")

    def __init__(self, replica: Target, path: tuple[str, ...]) -> None:
        if len(path) > MAX_DEPTH:
            raise ValueError(f"maps nest at most {MAX_DEPTH} levels, this path has {len(path)}")
        for name in path:
            if not isinstance(name, str) or not name:
                check_name(name)  # (raises; checked inline first: a call per name costs)
            check_text(name, "key")
        replica.check_type(path, self.TYPE)
        self._replica = replica
        self.path = path

    def _obj(self) -> Crdt | None:
        return self._replica.locate(self.path, self.TYPE)

    @property
    def value(self) -> Any:
        """The object's current plain value, read from the replica's state at each access
        (read-only; change it with the mutators): an int for counters, the value for a
        register, a frozenset for an MV register or a set, a bool for a flag, a dict
        for a map. An object never written (or removed) reads as its type's empty
        value: 0, None, frozenset(), False, {}."""
        obj = self._obj()
        return self.EMPTY if obj is None else obj.value

    def _observed(self, element: Value = None) -> tuple[Dot, ...]:
        obj = self._obj()
        return () if obj is None else obj.observed(element)

    def _emit(self, kind: Kind, **fields: Any) -> None:
        self._replica.submit(Op(self.path, self.TYPE, kind, **fields))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'/'.join(self.path)!r} = {self.value!r}>"


class _Counter(Handle):
    EMPTY = 0
    __slots__ = ()

    def _add(self, n: int, part: str) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"counter amounts are int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"counter amounts are >= 0, got {n} (use decrement for negatives)")
        obj = self._obj()
        done = getattr(obj, part).get(self._replica.replica_id, 0) if obj is not None else 0
        if done + n > MAX_AMOUNT:
            raise ValueError(f"this replica's total {part}-amount on {'/'.join(self.path)!r} "
                             f"would pass 2^63-1 ({done} + {n})")
        if n:
            self._emit(Kind.COUNTER_ADD, **{part: n})

    def increment(self, n: int = 1) -> None:
        """Add ``n`` (an int >= 0; 0 writes nothing). Raises TypeError for a
        non-int, ValueError for a negative ``n`` or when this replica's own total of
        increments on this counter would pass 2**63 - 1."""
        self._add(n, "p")


class CounterHandle(_Counter):
    """A PNCounter: ``increment(n)``, ``decrement(n)``; value is an int."""

    TYPE = ObjType.PNCOUNTER
    __slots__ = ()

    def decrement(self, n: int = 1) -> None:
        """Subtract ``n`` (an int >= 0; 0 writes nothing); the value may go below 0.
        Raises as :meth:`increment` does (the bound is on this replica's total of
        decrements)."""
        self._add(n, "n")


class GCounterHandle(_Counter):
    """A GCounter: ``increment(n)`` only; value is an int."""

    TYPE = ObjType.GCOUNTER
    __slots__ = ()


class RegisterHandle(Handle):
    """An LWWRegister: ``set(v)``; value is the winning value or None."""

    TYPE = ObjType.LWW_REGISTER
    __slots__ = ()

    def set(self, value: Value) -> None:
        """Assign ``value`` (str, bytes, int, float, bool or None). Of concurrent
        assignments, the one with the greater (hybrid logical timestamp, replica id)
        wins at every replica; a later assignment (one that saw it) always wins."""
        value = check_value(value)
        self._emit(Kind.REGISTER_SET, value=value, timestamp=self._replica.timestamp(),
                   observed=self._observed())

    @property
    def timestamp(self) -> int:
        """The hybrid logical timestamp of the winning assignment (0 if unset): the
        writer's wall clock (e.g. nanoseconds of ``time.time_ns``) when its replica has
        a ``wall_clock``, but always above every timestamp it had seen; else a
        Lamport counter (:class:`~crdt_ops.hlc.HybridClock`)."""
        obj = self._obj()
        return obj.timestamp if isinstance(obj, LWWRegister) else 0


class MVRegisterHandle(Handle):
    """An MVRegister: ``set(v)``; value is the frozenset of concurrent values."""

    TYPE = ObjType.MV_REGISTER
    EMPTY: ClassVar[frozenset[Value]] = frozenset()
    __slots__ = ()

    def set(self, value: Value) -> None:
        """Assign ``value``, replacing every value seen here; assignments concurrent
        with it are kept beside it (the value is then a frozenset of several)."""
        value = check_value(value)
        self._emit(Kind.REGISTER_SET, value=value, observed=self._observed())


class SetHandle(Handle):
    """An add-wins ORSet: ``add(v)``, ``remove(v)``; value is a frozenset."""

    TYPE = ObjType.ORSET
    EMPTY: ClassVar[frozenset[Value]] = frozenset()
    __slots__ = ()

    def add(self, element: Value) -> None:
        """Add ``element``; it wins over a concurrent remove of it (add-wins)."""
        element = check_value(element)
        self._emit(Kind.SET_ADD, value=element, observed=self._observed(element))

    def remove(self, element: Value) -> None:
        """Remove ``element`` as observed here; a no-op if it is not in the set."""
        element = check_value(element)
        seen = self._observed(element)
        if seen:
            self._emit(Kind.SET_REMOVE, value=element, observed=seen)

    def __contains__(self, element: Value) -> bool:
        return element in self.value


class FlagHandle(Handle):
    """An enable-wins EWFlag: ``enable()``, ``disable()``; value is a bool."""

    TYPE = ObjType.EWFLAG
    EMPTY = False
    __slots__ = ()

    def enable(self) -> None:
        """Set the flag; it wins over a concurrent ``disable()`` (enable-wins)."""
        self._emit(Kind.FLAG_ENABLE, observed=self._observed())

    def disable(self) -> None:
        """Clear the flag as enabled here; a no-op if it is not enabled here."""
        seen = self._observed()
        if seen:
            self._emit(Kind.FLAG_DISABLE, observed=seen)


class MapHandle(Handle, Fields):
    """An ORMap: nested handles by field name, and ``remove(field)``; value is a dict."""

    TYPE = ObjType.ORMAP
    EMPTY: ClassVar[dict[str, Any]] = {}
    __slots__ = ()

    @property
    def value(self) -> dict[str, Any]:
        """The visible fields as a dict of plain values (nested maps as dicts)."""
        obj = self._obj()
        return {} if obj is None else obj.value

    def _at(self, name: str) -> tuple[Target, tuple[str, ...]]:
        return self._replica, (*self.path, name)

    def remove(self, name: str) -> None:
        """Observed-remove of field ``name``; a no-op if it is not visible here. Raises
        ValueError for a name no field can have (:func:`check_name`)."""
        check_name(name)
        obj = self._obj()
        if not isinstance(obj, ORMap) or not obj.visible(name):
            return
        # it observes every update delivered here, a settled field's included (whose
        # dots are gone: crdt_ops/types/settled.py)
        self._emit(Kind.MAP_REMOVE, field=name, seen=dict(self._replica.clock),
                   floors=obj.remove_floors(name))


__all__ = ["CounterHandle", "Fields", "FlagHandle", "GCounterHandle", "Handle", "MVRegisterHandle",
           "MapHandle", "RegisterHandle", "SetHandle", "Target"]
