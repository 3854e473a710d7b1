"""The catalogue of replicated object types: each type's module registers its class
(:func:`register`, keyed by the class's ``TYPE``), and :func:`new_object` makes an empty
object of any registered type (a map makes its fields with it). Adding a type is a new
module in :mod:`crdt_ops.types` that registers its class, plus its wire encoding in
:mod:`crdt_ops.wire.codec` and its handle in :mod:`crdt_ops.handles`."""

from __future__ import annotations

from typing import TypeVar

from crdt_ops.ops import ObjType
from crdt_ops.types.base import Crdt

C = TypeVar("C", bound=type[Crdt])

_CLASSES: dict[ObjType, type[Crdt]] = {}


def register(cls: C) -> C:
    """Add ``cls`` to the catalogue under ``cls.TYPE`` (a class decorator). Raises
    ValueError if another class holds that type already."""
    held = _CLASSES.setdefault(cls.TYPE, cls)
    if held is not cls:
        raise ValueError(f"{cls.TYPE.name} is {held.__name__}'s already, not {cls.__name__}'s")
    return cls


def new_object(type_: ObjType) -> Crdt:
    """A fresh, empty object of ``type_``. Raises KeyError for a type nobody registered."""
    return _CLASSES[type_]()


def registered() -> dict[ObjType, type[Crdt]]:
    """The catalogue: every registered type and its class."""
    return dict(_CLASSES)
