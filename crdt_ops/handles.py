"""Handles: typed views of one object of a replica, with its mutators.

A handle holds a path, not an object: it always reads the replica's current
state, and every mutator prepares an operation at this replica (reading the
local state it must observe) and hands it to the replica to apply and send.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from crdt_ops.clock import Dot
from crdt_ops.ops import MAX_AMOUNT, MAX_DEPTH, Kind, ObjType, Op
from crdt_ops.types import Crdt, LWWRegister, ORMap, ORSet
from crdt_ops.values import Value, check_text, check_value

if TYPE_CHECKING:
    from crdt_ops.replica import Replica


class Handle:
    """The object at ``path`` of ``replica``, of this handle's type."""

    TYPE: ClassVar[ObjType]
    EMPTY: ClassVar[Any] = None
    __slots__ = ("_replica", "path")

    def __init__(self, replica: Replica, path: tuple[str, ...]) -> None:
        if len(path) > MAX_DEPTH:
            raise ValueError(f"maps nest at most {MAX_DEPTH} levels, this path has {len(path)}")
        for name in path:
            if not isinstance(name, str) or not name:
                raise ValueError(f"keys and field names are non-empty str, got {name!r}")
            check_text(name, "key")
        replica._check(path, self.TYPE)
        self._replica = replica
        self.path = path

    def _obj(self) -> Crdt | None:
        return self._replica._root.locate(self.path, self.TYPE)

    @property
    def value(self) -> Any:
        """The object's current plain value (the type's empty value if unset)."""
        obj = self._obj()
        return self.EMPTY if obj is None else obj.value

    def _observed(self) -> tuple[Dot, ...]:
        obj = self._obj()
        return () if obj is None else obj.observed()  # type: ignore[attr-defined]

    def _emit(self, kind: Kind, **fields: Any) -> None:
        self._replica._local(Op(self.path, self.TYPE, kind, **fields))

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
        self._add(n, "p")


class CounterHandle(_Counter):
    """A PNCounter: ``increment(n)``, ``decrement(n)``; value is an int."""

    TYPE = ObjType.PNCOUNTER
    __slots__ = ()

    def decrement(self, n: int = 1) -> None:
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
        value = check_value(value)
        self._emit(Kind.REGISTER_SET, value=value, timestamp=self._replica._hlc.now(),
                   observed=self._observed())

    @property
    def timestamp(self) -> int:
        obj = self._obj()
        return obj.timestamp if isinstance(obj, LWWRegister) else 0


class MVRegisterHandle(Handle):
    """An MVRegister: ``set(v)``; value is the frozenset of concurrent values."""

    TYPE = ObjType.MV_REGISTER
    EMPTY: ClassVar[frozenset[Value]] = frozenset()
    __slots__ = ()

    def set(self, value: Value) -> None:
        value = check_value(value)
        self._emit(Kind.REGISTER_SET, value=value, observed=self._observed())


class SetHandle(Handle):
    """An add-wins ORSet: ``add(v)``, ``remove(v)``; value is a frozenset."""

    TYPE = ObjType.ORSET
    EMPTY: ClassVar[frozenset[Value]] = frozenset()
    __slots__ = ()

    def _seen(self, element: Value) -> tuple[Dot, ...]:
        obj = self._obj()
        return obj.observed(element) if isinstance(obj, ORSet) else ()

    def add(self, element: Value) -> None:
        element = check_value(element)
        self._emit(Kind.SET_ADD, value=element, observed=self._seen(element))

    def remove(self, element: Value) -> None:
        """Remove ``element`` as observed here; a no-op if it is not in the set."""
        element = check_value(element)
        seen = self._seen(element)
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
        self._emit(Kind.FLAG_ENABLE, observed=self._observed())

    def disable(self) -> None:
        seen = self._observed()
        if seen:
            self._emit(Kind.FLAG_DISABLE, observed=seen)


class MapHandle(Handle):
    """An ORMap: nested handles by field name, and ``remove(field)``; value is a dict."""

    TYPE = ObjType.ORMAP
    EMPTY: ClassVar[dict[str, Any]] = {}
    __slots__ = ()

    @property
    def value(self) -> dict[str, Any]:
        obj = self._obj()
        return {} if obj is None else obj.value

    def counter(self, name: str) -> CounterHandle:
        return CounterHandle(self._replica, (*self.path, name))

    def gcounter(self, name: str) -> GCounterHandle:
        return GCounterHandle(self._replica, (*self.path, name))

    def register(self, name: str) -> RegisterHandle:
        return RegisterHandle(self._replica, (*self.path, name))

    def mvregister(self, name: str) -> MVRegisterHandle:
        return MVRegisterHandle(self._replica, (*self.path, name))

    def set(self, name: str) -> SetHandle:
        return SetHandle(self._replica, (*self.path, name))

    def flag(self, name: str) -> FlagHandle:
        return FlagHandle(self._replica, (*self.path, name))

    def map(self, name: str) -> MapHandle:
        return MapHandle(self._replica, (*self.path, name))

    def remove(self, name: str) -> None:
        """Observed-remove of field ``name``; a no-op if it is not visible here."""
        obj = self._obj()
        if not isinstance(obj, ORMap) or not any(
                f.presence for f in obj.fields.get(name, {}).values()):
            return
        seen, floors = obj.observe_remove(name)
        self._emit(Kind.MAP_REMOVE, field=name, seen=seen, floors=floors)


__all__ = ["CounterHandle", "FlagHandle", "GCounterHandle", "Handle", "MVRegisterHandle",
           "MapHandle", "RegisterHandle", "SetHandle"]
