"""The replica's top-level keys in order, for paging and prefix scans.

A replica's objects live under top-level keys (``containers/<id>``, ``nodes/<name>``);
a service that pages through them or scans one prefix should not sort every key
on every request. :class:`KeyIndex` keeps them sorted as they appear (a
``sortedcontainers.SortedList``: O(log n) to add, O(log n + k) to read k keys in
order from any point), at about 8 bytes per key beyond the key itself, which the
replica's map already holds. Keys are never dropped: an observed-remove map keeps
a removed field's metadata, and readers skip what is not visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList  # type: ignore[import-untyped]


class KeyIndex:
    """Every top-level key a replica has held, sorted (by code point)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = SortedList(keys)

    def add(self, key: str) -> None:
        """Add ``key``; the caller adds each key once (when it first appears)."""
        self._keys.add(key)

    def scan(self, prefix: str = "", after: str | None = None) -> Iterator[str]:
        """The keys starting with ``prefix``, in order, from the first one greater
        than ``after`` (from the first with the prefix when ``after`` is None)."""
        start = prefix if after is None or after < prefix else after
        inclusive = after is None or after < prefix
        for key in self._keys.irange(minimum=start, inclusive=(inclusive, True)):
            if not key.startswith(prefix):
                return
            yield key
