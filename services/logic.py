"""logic: validates desired changes, places containers on nodes, moves them off dead ones.

Reacts to every change of a container or node record (and re-checks once a
second, for nodes whose heartbeat stops). Its decisions are writes to its own
replica: ``assigned_node`` and ``rejected_reason``. It calls nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from crdt_ops.transport import Node as ReplicaNode
from services import model

log = logging.getLogger("services.logic")


class Logic:
    """Placement rules: a container that should run needs an owner under quota and a
    live node with free capacity; the least loaded such node gets it."""

    def __init__(self, node: ReplicaNode, *, quota: int = 20, node_timeout_s: float = 5.0,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.node = node
        self.quota = quota
        self.node_timeout_ms = int(node_timeout_s * 1000)
        self.now_ms = now_ms
        self._wake = asyncio.Event()

    def decide(self) -> int:
        """Write every decision the current state calls for; return how many."""
        r = self.node.replica
        now = self.now_ms()
        live = {n.name: n for n in model.nodes(r) if now - n.heartbeat <= self.node_timeout_ms}
        records = model.containers(r)
        load = Counter(c.assigned_node for c in records
                       if c.power_desired == "on" and c.assigned_node in live)
        per_owner = Counter(c.owner for c in records
                            if c.power_desired == "on" and c.assigned_node in live)
        writes = 0
        for c in records:
            if c.power_desired != "on" or c.name is None or c.assigned_node in live:
                continue
            rec = model.container(r, c.id)
            if per_owner[c.owner] >= self.quota:
                reason = f"owner {c.owner!r} already runs {self.quota} containers (quota)"
            else:
                free = [n for n in live.values() if load[n.name] < n.capacity]
                if free:
                    best = min(free, key=lambda n: (load[n.name], n.name))
                    if c.assigned_node != best.name:
                        log.info("placing %s on %s", c.id, best.name)
                    rec.register("assigned_node").set(best.name)
                    if c.rejected_reason is not None:
                        rec.register("rejected_reason").set(None)
                    load[best.name] += 1
                    per_owner[c.owner] += 1
                    writes += 1
                    continue
                reason = "no worker node with free capacity"
            if c.rejected_reason != reason:
                rec.register("rejected_reason").set(reason)
                writes += 1
        return writes

    async def run(self) -> None:
        self.node.replica.subscribe(model.CONTAINERS, lambda e: self._wake.set())
        self.node.replica.subscribe(model.NODES, lambda e: self._wake.set())
        while True:
            self._wake.clear()  # first: a change landing while we decide wakes the next round
            if self.decide():
                await self.node.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
