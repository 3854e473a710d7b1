"""Replicated values: str, bytes, int (signed 64 bit), float (not NaN), bool, None.

Strings (values, keys, field names, replica ids) must be valid Unicode: a lone
surrogate cannot be encoded on the wire.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from crdt_ops.errors import InvalidValue

Value = str | bytes | int | float | bool | None

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def check_value(value: object) -> Value:
    """Return ``value`` as it will be replicated, else raise :class:`InvalidValue`. An
    instance of a subclass of str, bytes, int or float (an ``IntEnum`` or ``StrEnum``
    member, say) is returned as the plain value it holds: every replica reads that, the
    writer included (the wire carries no class)."""
    if isinstance(value, str):
        return check_text(value if type(value) is str else str.__str__(value), "str value")
    if value is None or type(value) is bool:
        return value
    if isinstance(value, bytes):
        return value if type(value) is bytes else bytes(value)
    if isinstance(value, int):  # (not a bool: those returned above)
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValue(f"int {value} does not fit in signed 64 bits")
        return value if type(value) is int else int(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise InvalidValue("NaN cannot be replicated: it is not equal to itself")
        return value if type(value) is float else float(value)
    raise InvalidValue(
        f"{type(value).__name__} cannot be replicated; use str, bytes, int, float, bool or None"
    )


def check_text(text: str, what: str) -> str:
    """Return ``text`` if it can travel as UTF-8 (no lone surrogates), else raise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidValue(f"{what} {text!r} is not valid Unicode text ({e.reason})") from None
    return text


def value_key(value: Value) -> tuple[int, Value]:
    """A key that tells apart values Python treats as equal (``1``, ``1.0``, ``True``)."""
    if value is None:
        return (0, None)
    if value is True or value is False:
        return (1, value)
    if isinstance(value, int):
        return (2, value)
    if isinstance(value, float):
        return (3, value)
    if isinstance(value, str):
        return (4, value)
    return (5, value)


def value_set(values: Iterable[Value]) -> frozenset[Value]:
    """The frozenset a set or an MV register reads as, the same at every replica: where it
    holds values Python takes as equal (``1``, ``1.0`` and ``True``, kept apart by
    :func:`value_key`), it shows the first by :func:`value_key` (``True``, then ``1``, then
    ``1.0``), whatever order they arrived in; a frozenset keeps the first of equal values
    added to it."""
    return frozenset(sorted(values, key=value_key))
