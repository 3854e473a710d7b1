"""Container records as web and logic read them: each joined with its placement.

A container is two records in two groups (services/model.py): ``containers/<id>`` in
the platform's group, and its placement ``cells/<cell>/containers/<node>/<id>`` in the
group of the cell, under the node, that record names (its *home*). :class:`Containers`
offers the reads and change events of ``containers/`` keys a service had over one record
per container, with each value joined (:func:`services.model.joined`): listing, filters,
history and the event stream (web) and logic's index read it as they read one record
before.

Across the two groups nothing is ordered: a change of either record is an event of the
joined value, computed from the other record as this process holds it then. So a reader
may see a container's home before its placement arrives (the joined value shows no
assigned node yet), and never sees a placement the record does not name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crdt_ops.events import ChangeEvent, Subscribers
from crdt_ops.routing import Records
from services import model


class Containers:
    """The container records of ``records`` (the groups a process holds, or one replica
    holding every key), joined with their placements. :meth:`get`, :meth:`items` and
    :meth:`subscribe` take ``containers/`` keys and prefixes (ValueError otherwise) and
    give joined values; a change event is emitted when a joined value changed, from a
    change of the record or of the placement it names (not of another placement)."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self._subscribers = Subscribers()
        self._undo: list[Callable[[], None]] = []

    def get(self, key: str, default: Any = None) -> Any:
        """The joined value of the container at ``key``, or ``default``."""
        _check(key)
        value = model.joined_at(self.records, key)
        return default if value is None else value

    def items(self, prefix: str = model.CONTAINERS, *, after: str | None = None,
              limit: int | None = None) -> list[tuple[str, Any]]:
        """:meth:`Replica.items <crdt_ops.replica.Replica.items>` of the records, joined:
        one read of a placement per record returned."""
        _check(prefix)
        return [(k, model.joined_at(self.records, k, v))
                for k, v in self.records.items(prefix, after=after, limit=limit)]

    def subscribe(self, prefix: str, callback: Callable[[ChangeEvent], None]
                  ) -> Callable[[], None]:
        """Call ``callback`` with each change of a joined value under ``prefix`` (its
        ``key``: ``containers/<id>``; ``old``, ``new``: joined values; ``origin``: the
        replica whose operations changed the record or its placement). Returns the
        function that unsubscribes. One subscription to each group serves every
        callback."""
        _check(prefix)
        if not self._undo:
            self._undo = [self.records.subscribe(model.CONTAINERS, self._record_changed),
                          self.records.subscribe(model.CELLS, self._placement_changed)]
        undo = self._subscribers.add(prefix, callback)

        def unsubscribe() -> None:
            undo()
            if not self._subscribers:
                for u in self._undo:
                    u()
                self._undo = []
        return unsubscribe

    def _record_changed(self, event: ChangeEvent) -> None:
        cid = event.key[len(model.CONTAINERS):]
        was, now = model.record_home(event.old), model.record_home(event.new)
        placed = model.placed_in(self.records, was, cid)
        # the same home before and after: the same placement, read once
        placed_now = placed if now == was else model.placed_in(self.records, now, cid)
        old, new = model.joined(event.old, placed), model.joined(event.new, placed_now)
        if old != new:
            self._subscribers.emit(ChangeEvent(event.key, old, new, event.origin))

    def _placement_changed(self, event: ChangeEvent) -> None:
        found = model.placement_of(event.key)
        if found is None:  # a node record
            return
        home, cid = found
        key = model.CONTAINERS + cid
        rec = self.records.get(key)
        if model.record_home(rec) != home:  # an orphan: shown nowhere
            return
        old, new = model.joined(rec, event.old), model.joined(rec, event.new)
        if old != new:
            self._subscribers.emit(ChangeEvent(key, old, new, event.origin))


def _check(key: str) -> None:
    if not key.startswith(model.CONTAINERS):
        raise ValueError(f"Containers reads container records (keys under "
                         f"{model.CONTAINERS!r}), not {key!r}")


__all__ = ["Containers"]
