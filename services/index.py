"""The container records logic decides from, kept from change events.

Logic must not read every record of the platform for each change (issue 13: the cost of a
Start grew with the number of records). :class:`ContainerIndex` keeps, from the replica's
change events (one per changed record, with its new value), what a placement decision
needs, so that one decision costs what the change touches:

- ``records``: every container record, as :class:`~services.model.Container`;
- ``on_at[(node, epoch)]``: the records that should run and are assigned to that node
  under that epoch of its lease (a node's load, once the epoch is known to be live);
- ``owner_on[owner]``: the records of an owner that should run (its count against the
  quota);
- ``unassigned_on``: records that should run and name no node (or no epoch);
- ``rejected``: records that show a ``rejected_reason`` (it must be cleared once it no
  longer holds).

:meth:`ContainerIndex.load` rebuilds it from the replica (a full pass: at start, and as a
safety net); :meth:`ContainerIndex.changed` applies one change event. The two agree after
any sequence of changes (tests/services/test_index.py). :class:`NodeRecords` does the same
for a worker: the records assigned to its node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crdt_ops import Replica
from crdt_ops.events import ChangeEvent
from services import model

Placement = tuple[str, str]  # (node, epoch)


@dataclass
class ContainerIndex:
    """Container records and the sets logic decides from (see the module docstring)."""

    records: dict[str, model.Container] = field(default_factory=dict)
    on_at: dict[Placement, set[str]] = field(default_factory=dict)
    owner_on: dict[str | None, set[str]] = field(default_factory=dict)
    unassigned_on: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)

    def load(self, replica: Replica) -> None:
        """Rebuild from every container record of ``replica``."""
        self.records.clear()
        self.on_at.clear()
        self.owner_on.clear()
        self.unassigned_on.clear()
        self.rejected.clear()
        for c in model.containers(replica):
            self._add(c)

    def changed(self, event: ChangeEvent) -> None:
        """Apply a change event of a ``containers/<id>`` key."""
        self.put(event.key, event.new)

    def put(self, key: str, value: Any) -> None:
        """Record ``key`` (``containers/<id>``) as having the plain value ``value``
        (None or an empty or non-map value: no record)."""
        cid = key[len(model.CONTAINERS):]
        old = self.records.pop(cid, None)
        if old is not None:
            self._drop(old)
        if isinstance(value, dict) and value:
            self._add(model.Container.of(key, value))

    def pending(self, live_epochs: dict[str, str | None]) -> list[str]:
        """The records a decision may change, in id order: those that should run and are
        not placed on a live epoch (``live_epochs``: node -> its live epoch), and those
        showing a reason. Every other record needs no write."""
        out = set(self.unassigned_on) | self.rejected
        for (node, epoch), cids in self.on_at.items():
            if live_epochs.get(node) != epoch:
                out |= cids
        return sorted(out)

    def placed_count(self, cids: Iterable[str], live_epochs: dict[str, str | None]) -> int:
        """How many of ``cids`` are placed on the live epoch of their node."""
        n = 0
        for cid in cids:
            c = self.records[cid]
            if c.assigned_node is not None and c.assigned_epoch is not None \
                    and live_epochs.get(c.assigned_node) == c.assigned_epoch:
                n += 1
        return n

    def _add(self, c: model.Container) -> None:
        self.records[c.id] = c
        if c.rejected_reason is not None:
            self.rejected.add(c.id)
        if c.power_desired != "on":
            return
        self.owner_on.setdefault(c.owner, set()).add(c.id)
        if c.assigned_node is None or c.assigned_epoch is None:
            self.unassigned_on.add(c.id)
        else:
            self.on_at.setdefault((c.assigned_node, c.assigned_epoch), set()).add(c.id)

    def _drop(self, c: model.Container) -> None:
        self.rejected.discard(c.id)
        if c.power_desired != "on":
            return
        _discard(self.owner_on, c.owner, c.id)
        if c.assigned_node is None or c.assigned_epoch is None:
            self.unassigned_on.discard(c.id)
        else:
            _discard(self.on_at, (c.assigned_node, c.assigned_epoch), c.id)


def _discard(sets: dict[Any, set[str]], key: Any, cid: str) -> None:
    members = sets.get(key)
    if members is not None:
        members.discard(cid)
        if not members:
            del sets[key]


@dataclass
class NodeRecords:
    """The container records assigned to one node (``records``: id -> record), kept from
    change events like :class:`ContainerIndex`: what a worker reconciles its runtime with,
    without reading every record of the platform."""

    node: str
    records: dict[str, model.Container] = field(default_factory=dict)
    loaded: bool = False

    def load(self, replica: Replica) -> None:
        """Rebuild from every container record of ``replica``."""
        self.records = {c.id: c for c in model.containers(replica)
                        if c.assigned_node == self.node}
        self.loaded = True

    def changed(self, event: ChangeEvent) -> None:
        """Apply a change event of a ``containers/<id>`` key."""
        cid = event.key[len(model.CONTAINERS):]
        value = event.new
        c = model.Container.of(event.key, value) if isinstance(value, dict) and value else None
        if c is not None and c.assigned_node == self.node:
            self.records[cid] = c
        else:
            self.records.pop(cid, None)
