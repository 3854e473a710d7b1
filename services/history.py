"""Web's history of each container's changes: what changed, when, and which service did it.

This is **web's own view since it started**, kept in memory only: it is not
replicated and not stored. A restarted web starts with empty histories (a
container created before shows none of its earlier changes), and two web
instances may group the same changes differently. The record itself, not this
history, is the truth.

:class:`History` is a change callback (``replica.subscribe(model.CONTAINERS,
history.record)``). Each entry is one origin's change of one record: the
fields (paths inside the record, such as ``power_desired`` or
``workers/worker-1/pid``) whose value differs, with their old and new values.
What one origin changed in one event-loop iteration is one entry: a web request
(its writes are applied one operation at a time) or one delivered batch (two web
requests handled in the same iteration may share an entry). A container keeps
its last ``limit`` entries (50), and web keeps at most ``total`` entries (5,000)
in all: past that, the oldest entry of all is dropped, whichever container it is
of. So its memory does not grow with the number of records: at most ``total``
entries (about 0.7 kB each with their bookkeeping: some 3.5 MB), whatever the
number of containers. A container that changed before ``complete_since_ms`` may
have lost its older entries. Deleting a container drops its history.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crdt_ops.events import ChangeEvent
from crdt_ops.policy import belongs

#: entries kept per container
LIMIT = 50
#: entries kept in all, for every container together (the oldest are dropped first)
TOTAL = 5_000

_SINGLE_ROLES = ("web", "logic")


def service_of(replica_id: str) -> str | None:
    """The service (principal) a replica id belongs to: ``web``, ``logic`` or
    ``worker.<node>``; None for an id of none of them (a replica outside the
    services, e.g. an operator's tool)."""
    for role in _SINGLE_ROLES:
        if belongs(replica_id, role):
            return role
    parts = replica_id.split(".")
    if parts[0] == "worker" and len(parts) >= 2 and parts[1]:
        return f"worker.{parts[1]}"
    return None


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of a record as ``(path, value)``, nested maps joined by ``/``
    (``workers/worker-1/pid``); a record that is not a dict has none."""
    if not isinstance(value, dict):
        return
    for k, v in value.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, path + "/")
        else:
            yield path, v


def _plain(value: Any) -> Any:
    """A JSON value: replicated values that JSON lacks (bytes, frozensets) as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


@dataclass(slots=True)
class Entry:
    """One origin's change of one record. ``at_ms``: web's wall clock (Unix
    milliseconds) when web applied it (not when the origin wrote it);
    ``changes``: path -> (old, new), None for a field absent before or after."""

    at_ms: int
    origin: str
    created: bool
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: still in its record's history (False once dropped, by any limit or a delete)
    kept: bool = True

    def merge(self, changes: dict[str, tuple[Any, Any]]) -> None:
        """Take later changes of the same origin in: each field keeps its first
        old value; a field back at its old value is no change."""
        for path, (old, new) in changes.items():
            first = self.changes[path][0] if path in self.changes else old
            if first == new:
                self.changes.pop(path, None)
            else:
                self.changes[path] = (first, new)

    def as_json(self) -> dict[str, Any]:
        """``{"at_ms": int, "origin": replica id, "service": str | None,
        "kind": "created" | "changed", "changes": [{"field", "old", "new"}]}``,
        fields in path order."""
        return {"at_ms": self.at_ms, "origin": self.origin, "service": service_of(self.origin),
                "kind": "created" if self.created else "changed",
                "changes": [{"field": p, "old": _plain(o), "new": _plain(n)}
                            for p, (o, n) in sorted(self.changes.items())]}


def diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """The leaves whose value differs between two records: path -> (old, new)."""
    before, after = dict(flatten(old)), dict(flatten(new))
    return {p: (before.get(p), after.get(p)) for p in before.keys() | after.keys()
            if before.get(p) != after.get(p)}


class History:
    """The last ``limit`` entries of each record under ``prefix``, and at most
    ``total`` entries in all (see the module docstring). ``now_ms``: the wall clock
    entries are stamped with. Memory: at most ``total`` entries, whatever the
    number of records."""

    def __init__(self, prefix: str, limit: int = LIMIT,
                 now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 total: int = TOTAL) -> None:
        if limit < 1 or total < 1:
            raise ValueError(f"a history keeps at least 1 entry, not {min(limit, total)}")
        self.prefix = prefix
        self.limit = limit
        self.total = total
        self.now_ms = now_ms
        self.since_ms = now_ms()
        #: every container's history is whole from then on (up to ``limit``
        #: entries): the time of the newest entry dropped for ``total``, else
        #: ``since_ms``
        self.complete_since_ms = self.since_ms
        self._logs: dict[str, list[Entry]] = {}
        # every entry kept, oldest first, with its key; and entries dropped
        # otherwise (limit, merge, delete) until they come to the front or are swept
        self._order: deque[tuple[str, Entry]] = deque()
        self._kept = 0
        self._open: set[str] = set()  # keys whose last entry this loop iteration may extend
        self._closing = False

    def __len__(self) -> int:
        """How many entries are kept, for every record together."""
        return self._kept

    def record(self, event: ChangeEvent) -> None:
        """A change callback: note ``event`` in its record's history (a removed
        record's history is dropped)."""
        key = event.key[len(self.prefix):]
        if event.new is None:
            for entry in self._logs.pop(key, ()):
                self._drop(entry)
            self._open.discard(key)
            return
        changes = diff(event.old, event.new)
        if not changes:
            return
        log = self._logs.get(key)
        if log is not None and key in self._open and log and log[-1].origin == event.origin:
            log[-1].merge(changes)
            if not log[-1].changes:
                self._drop(log.pop())
                if not log:
                    del self._logs[key]
            return
        if log is None:
            log = self._logs[key] = []
        entry = Entry(self.now_ms(), event.origin, event.old is None, changes)
        log.append(entry)
        self._order.append((key, entry))
        self._kept += 1
        if len(log) > self.limit:
            self._drop(log.pop(0))
        while self._kept > self.total:
            self._drop_oldest()
        if len(self._order) > 2 * self.total:  # sweep the entries dropped otherwise
            self._order = deque(item for item in self._order if item[1].kept)
        self._keep_open(key)

    def _drop(self, entry: Entry) -> None:
        entry.kept = False
        self._kept -= 1

    def _drop_oldest(self) -> None:
        """Drop the oldest entry still kept (the first of its record's history)."""
        while True:
            key, entry = self._order.popleft()
            if entry.kept:
                break
        log = self._logs[key]
        first = log.pop(0)
        assert first is entry
        if not log:
            del self._logs[key]
        self._drop(entry)
        self.complete_since_ms = max(self.complete_since_ms, entry.at_ms)

    def _keep_open(self, key: str) -> None:
        """Let the rest of this event-loop iteration extend ``key``'s last entry."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a bare replica): every event is an entry
            return
        self._open.add(key)
        if not self._closing:
            self._closing = True
            loop.call_soon(self._close)

    def _close(self) -> None:
        self._open.clear()
        self._closing = False

    def entries(self, key: str) -> list[Entry]:
        """The history of the record at ``prefix + key``, oldest first (empty if
        web heard no change of it)."""
        return list(self._logs.get(key, ()))


__all__ = ["LIMIT", "TOTAL", "Entry", "History", "diff", "flatten", "service_of"]
