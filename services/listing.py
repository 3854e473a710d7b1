"""Listing container records at 50,000 and more: pages in key order, and filters.

``GET /api/containers`` and ``GET /api/events`` (services/web.py) list and stream the
records that match a :class:`Filter` (owner, desired power, actual power, node). Without
a filter a page is read from the replica's sorted keys (``Replica.items(after=, limit=)``:
O(log n + page)); with one, from :class:`Listing`'s small indexes kept from change events
(hash buckets of keys per owner and per node, key sets per power value), each candidate
checked against the record itself, so an index can make a page short but never wrong.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from crdt_ops.events import ChangeEvent
from services import model
from services.containers import Containers

#: ``GET /api/containers``: records per page when ``limit`` is not given, and at most
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: candidate records a filtered page reads beyond the page itself before it stops
#: short, with a ``next`` link to go on from there
SCAN_BEYOND = 1000
#: the filters of the listing and of the event stream, and the values each takes
FILTERS = ("owner", "desired", "actual", "node")
DESIRED_VALUES = model.POWER_DESIRED
ACTUAL_VALUES = ("on", "off", "failed")
#: hash buckets of the owner and node indexes (a bucket holds the keys of every value
#: that falls in it; results are checked against the record)
OWNER_BUCKETS = 4096
NODE_BUCKETS = 256
#: keys a bucket holds in a plain sorted list before it becomes a ``SortedList``
SMALL_BUCKET = 512


def listed_fields(rec: Any) -> tuple[str | None, str, str, str | None] | None:
    """The filtered fields of a listed record, ``(owner, desired, actual, node)`` as
    ``model.Container.of`` shows them (``actual`` from the slot of the assigned node);
    None for what web does not list (no record, or one without a name)."""
    if not isinstance(rec, dict) or not rec.get("name"):
        return None
    actual = model.shown_slot(rec).get("power_actual")
    return (rec.get("owner"), rec.get("power_desired") or "off", actual or "off",
            rec.get("assigned_node"))


@dataclass(frozen=True)
class Filter:
    """What a listing or an event stream is restricted to: records whose ``owner``,
    ``power_desired`` (``desired``), ``power_actual`` (``actual``) and
    ``assigned_node`` (``node``) equal the values given (None: any)."""

    owner: str | None = None
    desired: str | None = None
    actual: str | None = None
    node: str | None = None

    def values(self) -> tuple[str | None, str | None, str | None, str | None]:
        return (self.owner, self.desired, self.actual, self.node)

    def __bool__(self) -> bool:
        return any(v is not None for v in self.values())

    def matches(self, rec: Any) -> bool:
        """Whether ``rec`` (a record's plain value, or None) is listed and matches."""
        fields = listed_fields(rec)
        return fields is not None and all(
            want is None or want == have for want, have in zip(self.values(), fields,
                                                                strict=True))

    def query(self) -> dict[str, str]:
        """The filter as query parameters."""
        return {name: v for name, v in zip(FILTERS, self.values(), strict=True) if v is not None}


class _Buckets:
    """The keys of the records whose field falls in each bucket, sorted: by the value
    itself (``values``: the few a filter may ask for; others are not indexed) or by
    its hash modulo ``hashed``. Only text values are indexed (a filter's value is
    text). A bucket is a sorted list while it holds up to ``SMALL_BUCKET`` keys, then
    a ``SortedList`` (O(log n) to add or drop a key). About 9 bytes per key (a
    pointer; the key string is the replica's), plus about 0.1 kB per small bucket in
    use and 0.5 kB per large one."""

    def __init__(self, hashed: int = 0, values: tuple[str, ...] = ()) -> None:
        self.hashed = hashed
        self.values = values
        self._lists: dict[Any, list[str] | SortedList] = {}

    def _indexed(self, value: Any) -> bool:
        return isinstance(value, str) and (bool(self.hashed) or value in self.values)

    def _bucket(self, value: str) -> Any:
        return hash(value) % self.hashed if self.hashed else value

    def _lookup(self, value: str | None) -> tuple[Any, list[str] | SortedList | None] | None:
        """The bucket of ``value`` and the keys it holds (None: none yet), or None when
        ``value`` is not indexed."""
        if not isinstance(value, str) or not self._indexed(value):
            return None
        bucket = self._bucket(value)
        return bucket, self._lists.get(bucket)

    def add(self, key: str, value: str | None) -> None:
        found = self._lookup(value)
        if found is None:
            return
        bucket, keys = found
        if keys is None:
            self._lists[bucket] = [key]
        elif isinstance(keys, list):
            at = bisect.bisect_left(keys, key)
            if at == len(keys) or keys[at] != key:
                keys.insert(at, key)
                if len(keys) > SMALL_BUCKET:
                    self._lists[bucket] = SortedList(keys)
        elif key not in keys:
            keys.add(key)

    def discard(self, key: str, value: str | None) -> None:
        found = self._lookup(value)
        if found is None:
            return
        bucket, keys = found
        if keys is None:
            return
        if isinstance(keys, list):
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del keys[at]
        else:
            keys.discard(key)
        if not keys:
            del self._lists[bucket]

    def size(self, value: str) -> int:
        """How many keys the bucket of ``value`` holds (an upper bound of its records)."""
        keys = self._lists.get(self._bucket(value))
        return 0 if keys is None else len(keys)

    def scan(self, value: str, after: str | None) -> Iterator[str]:
        """The keys in the bucket of ``value``, in key order, after ``after`` (the
        bucket must not change while this is read)."""
        keys = self._lists.get(self._bucket(value))
        if keys is None:
            return iter(())
        if isinstance(keys, list):
            start = 0 if after is None else bisect.bisect_right(keys, after)
            return (keys[i] for i in range(start, len(keys)))
        if after is None:
            return iter(keys)
        return iter(keys.irange(minimum=after, inclusive=(False, True)))

    def buckets(self) -> dict[Any, list[str]]:
        """Every bucket's keys (for tests)."""
        return {bucket: list(keys) for bucket, keys in self._lists.items()}


@dataclass
class Page:
    """One page of a listing: ``records`` (their keys and plain values, in key order),
    and ``after``: the key the next page starts after (None: this was the last page)."""

    records: list[tuple[str, dict[str, Any]]]
    after: str | None


class Listing:
    """web's indexes for listing container records by filter (``replica``: the records
    joined with their placements, services/containers.py), kept from their change events
    (:meth:`changed`): per field of :class:`Filter`, the keys
    of the listed records whose field falls in each bucket (owner and node by hash,
    desired and actual by value), and how many records web lists. Memory: at most
    one index entry per record and field (about 40 bytes a record in all), and a
    bounded number of buckets. A page reads only candidates from the index (or the
    replica's key order without a filter) and checks each against the record itself,
    so an index holding a stale key costs a read and never shows a wrong record."""

    def __init__(self, replica: Containers) -> None:
        self.replica = replica
        #: how many records web lists (container records with a name)
        self.count = 0
        self._indexes = (_Buckets(OWNER_BUCKETS), _Buckets(values=DESIRED_VALUES),
                         _Buckets(values=ACTUAL_VALUES), _Buckets(NODE_BUCKETS))
        self.unsubscribe = replica.subscribe(model.CONTAINERS, self.changed)
        for key, rec in replica.items(model.CONTAINERS):
            self._put(key, None, listed_fields(rec))

    def changed(self, event: ChangeEvent) -> None:
        """A change callback: move the record's key to the buckets of its new fields."""
        self._put(event.key, listed_fields(event.old), listed_fields(event.new))

    def _put(self, key: str, old: tuple[str | None, ...] | None,
             new: tuple[str | None, ...] | None) -> None:
        if old == new:
            return
        self.count += (new is not None) - (old is not None)
        for i, index in enumerate(self._indexes):
            before = None if old is None else old[i]
            after = None if new is None else new[i]
            if before != after:
                index.discard(key, before)
                index.add(key, after)

    def page(self, flt: Filter, after: str | None, limit: int) -> Page:
        """Up to ``limit`` records that match ``flt``, in key order, from the first
        key greater than ``after``. Without a filter it reads the records of the page
        (and one more, to know whether there is a next page): O(log n + limit). With
        one it reads candidates from the smallest bucket among the filters' values,
        at most ``limit + SCAN_BEYOND`` of them, and stops short there (``after``:
        the last candidate read) if it has not filled the page; such a page may be
        short, or empty, and still have a next one."""
        if not flt:
            return self._unfiltered(after, limit)
        sizes = [(index.size(v), i) for i, (index, v) in
                 enumerate(zip(self._indexes, flt.values(), strict=True)) if v is not None]
        _, best = min(sizes)
        value = flt.values()[best]
        assert value is not None
        out: list[tuple[str, dict[str, Any]]] = []
        budget = limit + SCAN_BEYOND
        get = self.replica.get
        last = None
        for key in self._indexes[best].scan(value, after):
            rec = get(key)
            if flt.matches(rec):
                if len(out) == limit:  # one more exists: a next page
                    return Page(out, out[-1][0])
                out.append((key, rec))
            last = key
            budget -= 1
            if budget <= 0:
                return Page(out, last if len(out) < limit else out[-1][0])
        return Page(out, None)

    def _unfiltered(self, after: str | None, limit: int) -> Page:
        out: list[tuple[str, dict[str, Any]]] = []
        position = after
        while True:
            want = limit - len(out) + 1  # one more than the page: is there a next one?
            chunk = self.replica.items(model.CONTAINERS, after=position, limit=want)
            for key, rec in chunk:
                if listed_fields(rec) is None:  # a record without a name: not listed
                    continue
                if len(out) == limit:
                    return Page(out, out[-1][0])
                out.append((key, rec))
            if len(chunk) < want:
                return Page(out, None)
            position = chunk[-1][0]

    def close(self) -> None:
        self.unsubscribe()
