"""Settled entries: the compact form of a map field whose every update is causally stable.

Once every operation that wrote a field is causally stable (covered by the replica's
compaction frontier, :mod:`crdt_ops.stability`), every operation delivered from then
on is causally after all of them (Baquero, Almeida, Shoker, DAIS 2014, section 5).
So the field's metadata can go:

- its *presence* (which updates keep it visible): any remove to come has seen them
  all, so it drops them all;
- its *first* updates (which fix the name's type): every writer to come has seen
  them, so the type is fixed for everyone;
- for a last-writer-wins register, its one remaining assignment's dot and timestamp:
  every assignment to come was made after it, so it replaces it (and a
  hybrid-logical timestamp above it: :mod:`crdt_ops.hlc`).

A map keeps its settled fields in ``ORMap.settled``, name -> entry, where an entry is

- a plain :data:`~crdt_ops.values.Value`: a settled LWW register holding that value;
- a *frozen map*: a tuple ``(Shape, value, ...)``, a map all of whose fields are
  settled, its entries in the order of ``Shape.names`` (sorted), recursively;
- any other :class:`~crdt_ops.types.base.Crdt` (a map with unsettled fields, a
  counter, a set, a flag, an MV register): the object itself, without its field
  metadata.

No value is a tuple or a Crdt (values are str, bytes, int, float, bool, None), so
the three forms never mix up. A frozen map costs one tuple (8 bytes per field) and
shares its field names, in one :class:`Shape`, with every map of the same names.
"""

from __future__ import annotations

import weakref
from typing import Any

from crdt_ops.ops import ObjType
from crdt_ops.types.base import Crdt
from crdt_ops.types.register import LWWRegister


class Shape:
    """The sorted field names of frozen maps; one object per distinct tuple of names,
    shared by every frozen map with those names (while any uses it)."""

    __slots__ = ("__weakref__", "index", "names")
    _known: weakref.WeakValueDictionary[tuple[str, ...], Shape] = weakref.WeakValueDictionary()

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.index = {n: i + 1 for i, n in enumerate(names)}  # position in the frozen tuple

    @classmethod
    def of(cls, names: tuple[str, ...]) -> Shape:
        """The shared shape for ``names`` (sorted, distinct)."""
        shape = cls._known.get(names)
        if shape is None:
            shape = cls._known[names] = cls(names)
        return shape


def is_frozen(entry: Any) -> bool:
    """Whether a settled entry is a frozen map."""
    return type(entry) is tuple


def freeze(settled: dict[str, Any]) -> tuple[Any, ...]:
    """The frozen map of a map whose fields are all settled (``settled``: its entries)."""
    names = tuple(sorted(settled))
    return (Shape.of(names), *(settled[n] for n in names))


def unfreeze(frozen: tuple[Any, ...]) -> dict[str, Any]:
    """The settled entries of a frozen map, as a new dict."""
    shape: Shape = frozen[0]
    return dict(zip(shape.names, frozen[1:], strict=True))


def frozen_get(frozen: tuple[Any, ...], name: str, default: Any = None) -> Any:
    """The settled entry of field ``name`` of a frozen map, or ``default``."""
    i = frozen[0].index.get(name)
    return default if i is None else frozen[i]


def frozen_items(frozen: tuple[Any, ...]) -> zip[tuple[str, Any]]:
    """(name, entry) of every field of a frozen map."""
    return zip(frozen[0].names, frozen[1:], strict=True)


def entry_type(entry: Any) -> ObjType:
    """The object type of a settled entry."""
    if type(entry) is tuple:
        return ObjType.ORMAP
    if isinstance(entry, Crdt):
        return entry.TYPE
    return ObjType.LWW_REGISTER


def plain(entry: Any) -> Any:
    """The plain value of a settled entry (as the live object's ``value`` would be)."""
    if type(entry) is tuple:
        return {n: plain(v) for n, v in frozen_items(entry)}
    if isinstance(entry, Crdt):
        return entry.value
    return entry


class SettledRegister(LWWRegister):
    """A read-only view of a settled LWW register for handles (never part of state):
    its value, and no dots to observe (the assignment it shows is superseded by any
    assignment to come without being named)."""

    __slots__ = ()

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.entries[("", 0)] = (0, value)
        self._winner = ("", 0)

    def observed(self, element: Any = None) -> tuple[()]:
        return ()
