"""worker: runs the containers placed on its node, under a lease, and reports what runs.

It beats a heartbeat into ``nodes/<name>`` (with its lease's epoch and length)
every ``heartbeat_s``; a beat the broker confirmed in time renews the lease
(services/lease.py). On every change (and twice a heartbeat) it reconciles the
runtime with the records: a container placed on this node's current epoch that
should run is started (again, with a new pid, when ``restart_generation``
grew), while the lease holds; anything else that runs here is stopped. Failures
are written to ``power_actual``/``last_error`` and retried with backoff.

When the lease runs out (no confirmed beat for its length: the worker was paused,
cut off from the broker, or its beats were not confirmed) everything here is
stopped, by the worker and by its guard (services/guard.py, which does it even if
the worker is paused or dead), and the worker starts a new epoch: logic then
places the containers anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node as ReplicaNode
from services import guard, lease, model
from services.index import NodeRecords, full_passes
from services.runtime import Runtime, RuntimeError_

log = logging.getLogger("services.worker")

#: Seconds between two rebuilds of the node's records from every record (a safety net).
#: Each rebuild, and the first at start, runs in slices (services/index.py ``full_passes``).
FULL_PASS_S = 60.0


class Worker:
    """One node's worker. ``state_dir``: where its lease file and its guard's pid
    file live (the runtime's directory); ``lease_s``: the lease's length in seconds;
    ``use_guard``: run the guard process (tests of the worker alone may not)."""

    def __init__(self, node: ReplicaNode, name: str, runtime: Runtime, *,
                 capacity: int = 10, heartbeat_s: float = 1.0,
                 lease_s: float = lease.DEFAULT_LEASE_S, state_dir: Path | None = None,
                 use_guard: bool = True) -> None:
        if capacity < 0:
            raise ValueError(f"a node's capacity must be >= 0, not {capacity}")
        if lease_s < 4 * heartbeat_s:
            raise ValueError(f"a lease of {lease_s}s is too short for a heartbeat every "
                             f"{heartbeat_s}s: make it at least 4 heartbeats")
        self.node = node
        self.name = name
        self.runtime = runtime
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self.state_dir = state_dir or Path(f".crdt-ops-worker-{name}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lease_file = self.state_dir / lease.LEASE_FILE
        self.lease = self._adopt(lease_s)
        self.use_guard = use_guard
        self._wake = asyncio.Event()
        self._retry_at: dict[str, tuple[float, float]] = {}  # cid -> (when, backoff)
        self._beat: tuple[float, float] | None = None  # (written at, committed at)
        #: the records assigned to this node, kept from change events (services/index.py)
        self.assigned = NodeRecords(name)
        node.replica.subscribe(model.CONTAINERS, self._changed)

    def _changed(self, event: ChangeEvent) -> None:
        """A container record changed: keep this node's records, and reconcile soon if it
        is (or was) one of them; another node's record wakes nothing."""
        cid = event.key[len(model.CONTAINERS):]
        had = cid in self.assigned.records
        self.assigned.changed(event)
        if had or cid in self.assigned.records:
            self._wake.set()

    def _adopt(self, lease_s: float) -> lease.Lease:
        """The lease of a worker that ran here before, if it still holds (a restart
        keeps the containers); else a new epoch."""
        saved = lease.load(self.lease_file)
        now = time.monotonic()
        if saved is not None and saved.lease.may_run(now) and saved.lease.duration_s == lease_s:
            log.info("%s: keeping epoch %s (its lease holds for %.1fs more)", self.name,
                     saved.lease.epoch, saved.lease.deadline - now)
            lease.save(self.lease_file, saved.lease, os.getpid())  # the guard watches us now
            return saved.lease
        fresh = lease.Lease(lease.new_epoch(), lease_s)
        lease.save(self.lease_file, fresh, os.getpid())
        return fresh

    def beat(self) -> None:
        """Write a heartbeat with this epoch and lease (and the capacity if it changed)."""
        rec = model.node(self.node.replica, self.name)
        rec.register("heartbeat").set(int(time.time() * 1000))
        for field, value in (("capacity", self.capacity), ("epoch", self.lease.epoch),
                             ("lease_ms", int(self.lease.duration_s * 1000))):
            if rec.register(field).value != value:
                rec.register(field).set(value)

    def keep_lease(self, now: float) -> None:
        """Renew the lease from a confirmed beat; when it ran out, stop everything and
        start a new epoch."""
        if self._beat is not None and self.node.confirmed_through() >= self._beat[1]:
            written, _ = self._beat
            self._beat = None
            if self.lease.renew(written, now):
                lease.save(self.lease_file, self.lease, os.getpid())
        if self.lease.lapsed(now):
            stopped = self._stop_all()
            old = self.lease.epoch
            self.lease = lease.Lease(lease.new_epoch(), self.lease.duration_s)
            lease.save(self.lease_file, self.lease, os.getpid())
            log.warning("%s: the lease of epoch %s ran out (no heartbeat confirmed in time "
                        "for %.0fs): stopped %d containers; new epoch %s", self.name, old,
                        self.lease.duration_s, stopped, self.lease.epoch)

    def _stop_all(self) -> int:
        running = self.runtime.running()
        for cid in running:
            self.runtime.stop(cid, grace_s=self.lease.stop_wait_s)
        return len(running)

    def reconcile(self, now: float | None = None) -> int:
        """Make the runtime match the records; write what changed. Returns writes."""
        now = time.monotonic() if now is None else now
        r = self.node.replica
        running = self.runtime.running()
        writes = 0
        if not self.assigned.loaded:  # run() waits for its sliced pass; a direct call loads
            self.assigned.load(r)     # them in one go
        here = dict(self.assigned.records)
        may_run = self.lease.may_run(now)
        mine = {cid: c for cid, c in here.items() if may_run and c.power_desired == "on"
                and c.assigned_epoch == self.lease.epoch}
        for cid in set(running) - set(mine):
            log.info("%s: stopping %s", self.name, cid)
            self.runtime.stop(cid, grace_s=self.lease.stop_wait_s)
            running.pop(cid)
        for c in here.values():
            if c.id not in mine and (c.power_actual != "off" or c.pid is not None):
                self._report(c.id, power_actual="off", pid=None)
                writes += 1
        tick = time.monotonic()
        for c in mine.values():
            fresh = c.id in running and c.started_generation == c.restart_generation
            if fresh:
                if c.power_actual != "on" or c.pid != running[c.id]:
                    self._report(c.id, power_actual="on", pid=running[c.id], last_error=None)
                    writes += 1
                continue
            when, backoff = self._retry_at.get(c.id, (0.0, 0.5))
            if tick < when:
                continue
            if self.use_guard:
                guard.ensure(self.state_dir, self.runtime)
            try:
                pid = self.runtime.start(c.id)
            except RuntimeError_ as e:
                log.warning("%s: starting %s failed: %s", self.name, c.id, e)
                self._retry_at[c.id] = (tick + backoff, min(backoff * 2, 30.0))
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
        # this node's records from every record, in slices: now (the worker beats meanwhile,
        # but reconciles only once they are loaded: it would stop what it missed), then
        # every FULL_PASS_S
        passes = asyncio.create_task(full_passes(
            self.assigned, self.node.replica, every_s=FULL_PASS_S, wake=self._wake,
            name=f"{self.name}'s records"))
        last_beat = 0.0
        try:
            while True:
                self.keep_lease(time.monotonic())
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    if self.use_guard:
                        guard.ensure(self.state_dir, self.runtime)
                    written = last_beat = time.monotonic()
                    self.beat()
                    await self.node.flush()
                    self._beat = (written, time.monotonic())
                self._wake.clear()  # first: a change landing while we work wakes the next
                if self.assigned.loaded:
                    self.reconcile()
                await self.node.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.heartbeat_s / 4)
        finally:
            passes.cancel()
