"""worker: runs the containers placed on its node and reports what really runs.

It beats a heartbeat into ``nodes/<name>``, and on every change (and once a
second) reconciles the runtime with the records: a container placed here that
should run is started (again, with a new pid, when ``restart_generation`` grew);
one that should not, or was moved away or deleted, is stopped. Failures are
written to ``power_actual``/``last_error`` and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from crdt_ops.transport import Node as ReplicaNode
from services import model
from services.runtime import Runtime, RuntimeError_

log = logging.getLogger("services.worker")


class Worker:
    def __init__(self, node: ReplicaNode, name: str, runtime: Runtime, *,
                 capacity: int = 10, heartbeat_s: float = 1.0) -> None:
        self.node = node
        self.name = name
        self.runtime = runtime
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self._wake = asyncio.Event()
        self._retry_at: dict[str, tuple[float, float]] = {}  # cid -> (when, backoff)

    def beat(self) -> None:
        rec = model.node(self.node.replica, self.name)
        rec.register("heartbeat").set(int(time.time() * 1000))
        if rec.register("capacity").value != self.capacity:
            rec.register("capacity").set(self.capacity)

    def reconcile(self) -> int:
        """Make the runtime match the records; write what changed. Returns writes."""
        r = self.node.replica
        running = self.runtime.running()
        writes = 0
        mine = {c.id: c for c in model.containers(r) if c.assigned_node == self.name}
        for cid in set(running) - {k for k, c in mine.items() if c.power_desired == "on"}:
            log.info("%s: stopping %s", self.name, cid)
            self.runtime.stop(cid)
            running.pop(cid)
            if cid in mine:
                self._report(mine[cid].id, power_actual="off", pid=None)
                writes += 1
        now = time.monotonic()
        for c in mine.values():
            if c.power_desired != "on":
                if c.power_actual not in ("off",):
                    self._report(c.id, power_actual="off", pid=None)
                    writes += 1
                continue
            fresh = c.id in running and c.started_generation == c.restart_generation
            if fresh:
                if c.power_actual != "on" or c.pid != running[c.id]:
                    self._report(c.id, power_actual="on", pid=running[c.id], last_error=None)
                    writes += 1
                continue
            when, backoff = self._retry_at.get(c.id, (0.0, 0.5))
            if now < when:
                continue
            try:
                pid = self.runtime.start(c.id)
            except RuntimeError_ as e:
                log.warning("%s: starting %s failed: %s", self.name, c.id, e)
                self._retry_at[c.id] = (now + backoff, min(backoff * 2, 30.0))
                self._report(c.id, power_actual="failed", last_error=str(e))
                writes += 1
                continue
            self._retry_at.pop(c.id, None)
            running[c.id] = pid
            log.info("%s: started %s as pid %d", self.name, c.id, pid)
            self._report(c.id, power_actual="on", pid=pid, last_error=None,
                         started_generation=c.restart_generation)
            writes += 1
        count = len(running)
        rec = model.node(r, self.name)
        if rec.register("running").value != count:
            rec.register("running").set(count)
        return writes

    def _report(self, cid: str, **fields: object) -> None:
        rec = model.report(self.node.replica, cid, self.name)
        for field, value in fields.items():
            if rec.register(field).value != value:
                rec.register(field).set(value)  # type: ignore[arg-type]

    async def run(self) -> None:
        self.node.replica.subscribe(model.CONTAINERS, lambda e: self._wake.set())
        last_beat = 0.0
        while True:
            if time.monotonic() - last_beat >= self.heartbeat_s:
                self.beat()
                last_beat = time.monotonic()
            self._wake.clear()  # first: a change landing while we work wakes the next round
            self.reconcile()
            await self.node.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_s / 2)
