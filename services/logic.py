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
from collections.abc import Callable

from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node as ReplicaNode
from services import model
from services.liveness import Liveness

log = logging.getLogger("services.logic")

NO_CAPACITY = "no worker node with free capacity"


class Logic:
    """Placement rules: a container that should run needs an owner under quota and a
    live node with free capacity; the least loaded such node gets it. ``margin_s``:
    how long past the end of a silent node's lease (plus a quarter) logic waits
    before it moves the node's containers (services/liveness.py)."""

    def __init__(self, node: ReplicaNode, *, quota: int = 20, margin_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if quota < 1:
            raise ValueError(f"the quota must be at least 1, not {quota}")
        self.node = node
        self.quota = quota
        self.monotonic = monotonic
        self.liveness = Liveness(monotonic(), margin_s)
        self._wake = asyncio.Event()

    def _heard(self, event: ChangeEvent) -> None:
        """A node record changed: its worker's current epoch was heard now."""
        if isinstance(event.new, dict) and event.new.get("epoch"):
            self.liveness.heard(event.key[len(model.NODES):], event.new["epoch"],
                                self.monotonic())
        self._wake.set()

    def live_nodes(self) -> tuple[dict[str, model.Node], set[str]]:
        """The nodes whose current epoch is not gone (containers on them stay), and of
        those the names of the fresh ones (new containers may go there)."""
        heard = self.node.heard_through()
        live: dict[str, model.Node] = {}
        fresh: set[str] = set()
        for n in model.nodes(self.node.replica):
            if not n.epoch or not n.lease_ms:
                continue
            if self.liveness.gone(n.name, n.epoch, n.epoch, n.lease_s, heard):
                continue
            live[n.name] = n
            if self.liveness.fresh(n.name, n.epoch, n.lease_s, heard):
                fresh.add(n.name)
        self.liveness.forget({(n.name, n.epoch) for n in live.values() if n.epoch})
        return live, fresh

    def decide(self) -> int:
        """Write every decision the current state calls for; return how many."""
        r = self.node.replica
        live, fresh = self.live_nodes()

        def placed(c: model.Container) -> bool:
            n = live.get(c.assigned_node or "")
            return n is not None and c.assigned_epoch == n.epoch

        records = model.containers(r)
        running = [c for c in records if c.power_desired == "on" and placed(c)]
        load = Counter(c.assigned_node for c in running)
        per_owner = Counter(c.owner for c in running)
        writes = 0
        for c in records:
            if c.name is None:
                continue
            reason = None
            if c.power_desired == "on" and not placed(c):
                if per_owner[c.owner] >= self.quota:
                    reason = f"owner {c.owner!r} already runs {self.quota} containers (quota)"
                else:
                    free = [live[name] for name in fresh if load[name] < live[name].capacity]
                    if free:
                        best = min(free, key=lambda n: (load[n.name], n.name))
                        self._place(c, best)
                        load[best.name] += 1
                        per_owner[c.owner] += 1
                        writes += 1
                    else:
                        reason = NO_CAPACITY
            if c.rejected_reason != reason:  # a reason that no longer holds goes
                model.container(r, c.id).register("rejected_reason").set(reason)
                writes += 1
        return writes

    def _place(self, c: model.Container, n: model.Node) -> None:
        rec = model.container(self.node.replica, c.id)
        if c.assigned_node and c.assigned_node != n.name:
            log.info("moving %s from %s (its lease is over) to %s", c.id, c.assigned_node, n.name)
        else:
            log.info("placing %s on %s (epoch %s)", c.id, n.name, n.epoch)
        if c.assigned_node != n.name:
            rec.register("assigned_node").set(n.name)
        rec.register("assigned_epoch").set(n.epoch)

    async def run(self) -> None:
        self.node.replica.subscribe(model.CONTAINERS, lambda e: self._wake.set())
        self.node.replica.subscribe(model.NODES, self._heard)
        while True:
            self._wake.clear()  # first: a change landing while we decide wakes the next round
            if self.decide():
                await self.node.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
