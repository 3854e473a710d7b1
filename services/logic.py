"""logic: validates desired changes, places containers on nodes, moves them off dead ones.

Reacts to every change of a container or node record (and re-checks once a
second, for nodes that fell silent). Its decisions are writes to its own
replica: ``assigned_node`` with ``assigned_epoch`` (the epoch of the node's lease
the placement names: services/lease.py), and ``rejected_reason``. It calls nobody.

A container leaves its node only once the node's epoch is *gone* for sure
(services/liveness.py): its lease ran out, so its worker and guard stopped it.
Until then it stays, however long the node is silent; a broker outage or a pause
of logic itself proves nothing about the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from services import model
from services.index import ContainerIndex, full_passes
from services.liveness import Liveness

log = logging.getLogger("services.logic")

NO_CAPACITY = "no worker node with free capacity"
#: Seconds between two rebuilds of the index from every record (a safety net: the index is
#: kept from change events, and tests check the two agree). Each rebuild, and the first at
#: start, runs in slices (services/index.py ``full_passes``).
FULL_PASS_S = 60.0


@dataclass(frozen=True)
class Decision:
    """What logic decides for one container: the node to place it on (None: none), and
    the reason it shows (None: none)."""

    container: model.Container
    node: model.Node | None
    reason: str | None


def plan(candidates: Iterable[model.Container], live: dict[str, model.Node], fresh: set[str],
         load: Counter[str], running: Callable[[str | None], int],
         counts: dict[str | None, int], quota: int) -> list[Decision]:
    """The placement rules, in one place (pure). For each of ``candidates`` (in order),
    a container that should run and is not placed on its node's live epoch needs its
    owner under ``quota`` (``running(owner)``: how many of the owner's run now) and a
    fresh node with free capacity (``load``: containers per live node); the least loaded
    such node gets it (ties by name). ``load`` and ``counts`` (owner -> running, filled
    by ``running``) are updated for each placement. Returns a decision for every
    candidate with a name."""
    out = []
    for c in candidates:
        if c.name is None:
            continue
        n = live.get(c.assigned_node or "")
        placed = n is not None and c.assigned_epoch == n.epoch
        reason, node = None, None
        if c.power_desired == "on" and not placed:
            if running(c.owner) >= quota:
                reason = f"owner {c.owner!r} already runs {quota} containers (quota)"
            else:
                free = [live[name] for name in fresh if load[name] < live[name].capacity]
                if free:
                    node = min(free, key=lambda x: (load[x.name], x.name))
                    load[node.name] += 1
                    counts[c.owner] = running(c.owner) + 1
                else:
                    reason = NO_CAPACITY
        out.append(Decision(c, node, reason))
    return out


def decisions(idx: ContainerIndex, live: dict[str, model.Node], fresh: set[str],
              quota: int) -> list[Decision]:
    """:func:`plan` over the records of ``idx`` a decision may change
    (:meth:`ContainerIndex.pending <services.index.ContainerIndex.pending>`), with the
    nodes' load and the owners' running counts read from the index: what a full pass over
    every record decides, at the cost of what changed."""
    epochs: dict[str, str | None] = {name: n.epoch for name, n in live.items()}
    load = Counter({name: len(idx.on_at.get((name, n.epoch or ""), ()))
                    for name, n in live.items()})
    counts: dict[str | None, int] = {}

    def running(owner: str | None) -> int:
        if owner not in counts:
            counts[owner] = idx.placed_count(idx.owner_on.get(owner, ()), epochs)
        return counts[owner]

    return plan([idx.records[cid] for cid in idx.pending(epochs)], live, fresh, load, running,
                counts, quota)


class Logic:
    """Placement rules: a container that should run needs an owner under quota and a
    live node with free capacity; the least loaded such node gets it. ``margin_s``:
    how long past the end of a silent node's lease (plus a quarter) logic waits
    before it moves the node's containers (services/liveness.py)."""

    def __init__(self, node: NodeGroups[Node], *, quota: int = 20, margin_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if quota < 1:
            raise ValueError(f"the quota must be at least 1, not {quota}")
        self.node = node
        self.quota = quota
        self.monotonic = monotonic
        self.liveness = Liveness(monotonic(), margin_s)
        #: the container records, kept from change events (services/index.py)
        self.index = ContainerIndex()
        self._wake = asyncio.Event()

    def _heard(self, event: ChangeEvent) -> None:
        """A node record changed: its worker's current epoch was heard now."""
        name = model.node_name(event.key)
        if name is None:
            return
        if isinstance(event.new, dict) and event.new.get("epoch"):
            self.liveness.heard(name, event.new["epoch"], self.monotonic())
        self._wake.set()

    def live_nodes(self) -> tuple[dict[str, model.Node], set[str]]:
        """The nodes whose current epoch is not gone (containers on them stay), and of
        those the names of the fresh ones (new containers may go there)."""
        live: dict[str, model.Node] = {}
        fresh: set[str] = set()
        for n in model.nodes(self.node.groups):
            if not n.epoch or not n.lease_ms:
                continue
            # what logic heard of the group the node's beats go to
            heard = self.node.node_of(model.node_key(n.cell, n.name)).heard_through()
            if self.liveness.gone(n.name, n.epoch, n.epoch, n.lease_s, heard):
                continue
            live[n.name] = n
            if self.liveness.fresh(n.name, n.epoch, n.lease_s, heard):
                fresh.add(n.name)
        self.liveness.forget({(n.name, n.epoch) for n in live.values() if n.epoch})
        return live, fresh

    def decide(self) -> int:
        """Write every decision the current state calls for; return how many. Reads only
        the records a decision may change (:func:`decisions`), and the nodes."""
        r = self.node.groups
        live, fresh = self.live_nodes()
        writes = 0
        for d in decisions(self.index, live, fresh, self.quota):
            if d.node is not None:
                self._place(d.container, d.node)
                writes += 1
            if d.container.rejected_reason != d.reason:  # a reason that no longer holds goes
                model.container(r, d.container.id).register("rejected_reason").set(d.reason)
                writes += 1
        return writes

    def _place(self, c: model.Container, n: model.Node) -> None:
        rec = model.container(self.node.groups, c.id)
        if c.assigned_node and c.assigned_node != n.name:
            log.info("moving %s from %s (its lease is over) to %s", c.id, c.assigned_node, n.name)
        else:
            log.info("placing %s on %s (epoch %s)", c.id, n.name, n.epoch)
        if c.assigned_node != n.name:
            rec.register("assigned_node").set(n.name)
        rec.register("assigned_epoch").set(n.epoch)

    def _changed(self, event: ChangeEvent) -> None:
        self.index.changed(event)
        self._wake.set()

    async def run(self) -> None:
        r = self.node.groups
        r.subscribe(model.CONTAINERS, self._changed)
        r.subscribe(model.CELLS, self._heard)
        # the index from every record, in slices: now (no decision until it is loaded: it
        # would miss records), then every FULL_PASS_S
        passes = asyncio.create_task(full_passes(self.index, r, every_s=FULL_PASS_S,
                                                 wake=self._wake, name="logic's index"))
        try:
            while True:
                self._wake.clear()  # first: a change landing while we decide wakes the next
                if self.index.loaded and self.decide():
                    await self.node.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            passes.cancel()
