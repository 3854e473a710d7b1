"""Settled registers and frozen maps in a snapshot: one MessagePack blob per map.

A snapshot of a large platform is mostly settled state (:mod:`crdt_ops.types.settled`):
per record a frozen map of a few plain values. Written as one protobuf message per
field it costs tens of microseconds per record to write and read; here the settled
registers and frozen maps of one map go into a single MessagePack document
(https://msgpack.org, the ``msgpack`` package's C coder), read back in one call.

The blob is two MessagePack documents: ``shapes``, the field names of each distinct
shape once, then ``entries``, a map from a field name to a plain value (a settled
register; MessagePack keeps str, bytes, int, float, bool and None apart) or to an
array ``[shape index, entry, ...]`` (a frozen map; no value is an array). A frozen map
that holds another kind of object (a counter, a set) is not written here: the caller
writes that field as a protobuf message.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack  # type: ignore[import-untyped]

from crdt_ops.errors import InvalidMessage
from crdt_ops.types.base import Crdt
from crdt_ops.types.settled import Shape
from crdt_ops.values import check_value

#: Decoded str values up to this many characters are interned: one object per distinct
#: string (``"on"``, a node's name, an owner) however many records hold it.
SHARED_VALUE = 64
_intern = sys.intern


class _NotPlain(Exception):
    """A frozen map holds an object MessagePack does not carry."""


def split(settled: dict[str, Any]) -> tuple[bytes, list[str]]:
    """The blob of ``settled``'s registers and frozen maps, and the names of the
    entries left out (objects, and frozen maps holding one), for the caller to write."""
    shapes: dict[Shape, int] = {}
    entries: dict[str, Any] = {}
    rest: list[str] = []

    def enc(e: Any) -> Any:
        if type(e) is tuple:
            shape = e[0]
            i = shapes.get(shape)
            if i is None:
                i = shapes[shape] = len(shapes)
            return [i, *map(enc, e[1:])]
        if isinstance(e, Crdt):
            raise _NotPlain
        return e

    for name, e in settled.items():
        try:
            entries[name] = enc(e)
        except _NotPlain:
            rest.append(name)
    if not entries:
        return b"", rest
    return (msgpack.packb([list(s.names) for s in shapes], use_bin_type=True)
            + msgpack.packb(entries, use_bin_type=True)), rest


def join(blob: bytes) -> dict[str, Any]:
    """The settled entries written by :func:`split`. Raises
    :class:`~crdt_ops.errors.InvalidMessage` (``bad-snapshot``) if the blob is not one."""
    try:
        head = msgpack.Unpacker(raw=False, strict_map_key=True)
        head.feed(blob)
        shapes = [Shape.of(_names(ns)) for ns in next(head)]

        def frozen(arr: list[Any]) -> Any:
            i = arr[0] if arr else None
            if type(i) is not int or not 0 <= i < len(shapes):
                raise ValueError(f"a frozen map names shape {i!r} of {len(shapes)}")
            shape = shapes[i]
            if len(arr) != len(shape.names) + 1:
                raise ValueError(f"a frozen map of {len(shape.names)} names holds "
                                 f"{len(arr) - 1} entries")
            return (shape, *map(_share, arr[1:]))

        entries = msgpack.unpackb(blob[head.tell():], raw=False, list_hook=frozen,
                                  strict_map_key=True)
        if not isinstance(entries, dict) or not all(
                isinstance(k, str) and k for k in entries):
            raise ValueError("the entries are not a map of names")
        return {_intern(k): _share(v) for k, v in entries.items()}
    except Exception as e:  # any malformed blob: msgpack's, index and type errors
        raise InvalidMessage("bad-snapshot", f"settled fields do not decode ({e!r})") from None


def _names(names: Any) -> tuple[str, ...]:
    out = tuple(_intern(n) for n in names)  # TypeError unless each is a str
    if not all(out) or len(set(out)) != len(out):
        raise ValueError(f"a shape's names are not distinct non-empty names: {out!r}")
    return out


def _share(v: Any) -> Any:
    """A decoded entry, checked: a frozen map (already checked), or a value
    (:func:`crdt_ops.values.check_value`), a short str interned."""
    if type(v) is str:
        return _intern(v) if len(v) <= SHARED_VALUE else v
    if type(v) is tuple:
        return v
    return check_value(v)
