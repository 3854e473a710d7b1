"""worker: runs the containers placed on its node, under a lease, and reports what runs.

It beats a heartbeat into its node record, ``cells/<cell>/nodes/<name>`` (with its
lease's epoch and length), every ``heartbeat_s`` (a fifth of the lease unless told:
``services.lease.beat_interval_s``): into its cell's group, which its cell's workers,
logic and web hold (services/model.py); a beat the broker confirmed in time renews the
lease (services/lease.py). It holds its cell's group only, and reads the placements on
its own node (``cells/<cell>/containers/<name>/<id>``: logic's copies of
``power_desired`` and ``restart_generation``, and the assignment). On every change it
reconciles the containers whose placements changed; every ``reconcile_s`` (1 s), and when its
lease starts or stops allowing containers to run, all of them with what the runtime
runs (the safety net: an instance that died, one no record wants). A container placed
on this node's current epoch that should run is started (again, with a new pid, when
``restart_generation`` grew), while the lease holds; anything else that runs here is
stopped. Failures are written to ``power_actual``/``last_error`` and retried with backoff.

When the lease runs out (no confirmed beat for its length: the worker was paused,
cut off from the broker, or its beats were not confirmed) everything here is
stopped, by the worker and by its guard (services/guard.py, which does it even if
the worker is paused or dead), and the worker starts a new epoch: logic then
places the containers anew.

The runtime's calls (listing, starting, stopping) run on a thread of the worker's own, one
at a time, in the order they are made: a ``docker run`` that pulls an image (each of its
three ``docker`` commands may take up to a minute), or the stop of a container that ignores
SIGTERM (half the lease's grace, then SIGKILL), holds up the node's other starts and stops,
not the event loop, and so not the beats that keep the lease, the deliveries or the reports.
One reconcile is one such call (:meth:`Worker.reconcile`). A container is reported off once
its stop returned; a start that its record or lease stopped allowing while earlier calls ran
is not made. A worker that starts a new epoch stops what an earlier one left running
before its first beat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.store import StoreUnavailable
from crdt_ops.transport.waiting import wait_set
from services import guard, lease, model
from services.converge import Converged, converge
from services.index import NodeRecords, full_passes
from services.runtime import Runtime

log = logging.getLogger("services.worker")
T = TypeVar("T")

#: Seconds between two rebuilds of the node's records from every record (a safety net).
#: Each rebuild, and the first at start, runs in slices (services/index.py ``full_passes``).
FULL_PASS_S = 60.0
#: Seconds between two full reconciles (the runtime's instances against the records): how
#: soon a container whose process died is found and started again. Local work only.
RECONCILE_S = 1.0


#: Seconds between two looks at whether a beat written was confirmed (to renew the lease
#: promptly), while one is awaited.
CONFIRM_POLL_S = 0.25


#: The file in a worker's state directory that names the cell its node belongs to.
CELL_FILE = "cell"


def pin_cell(state_dir: Path, name: str, cell: str) -> None:
    """Record that node ``name`` (its state in ``state_dir``) belongs to ``cell``; raise
    ValueError, changing nothing, if it ran in another cell before. A node stays in its
    cell: its record, leases and placements live in that cell's group, and the same node
    name in a second cell would be two nodes to logic."""
    path = state_dir / CELL_FILE
    was = path.read_text().strip() if path.exists() else None
    if was is not None and was != cell:
        raise ValueError(f"node {name} belongs to cell {was!r} (it ran there: {path}); a node "
                         f"stays in its cell: run it with --cell {was}, or under another "
                         f"--node name to join cell {cell!r}")
    if was is None:
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(cell + "\n")


class Worker:
    """One node's worker, in cell ``cell`` (``node`` holds that cell's group). ``state_dir``:
    where its lease file and its guard's pid file live (the runtime's directory);
    ``lease_s``: the lease's length in seconds; ``heartbeat_s``: seconds between its beats
    (default ``services.lease.beat_interval_s(lease_s)``; at least 4 to a lease, else
    ValueError); ``reconcile_s``: seconds between full reconciles; ``use_guard``: run the
    guard process (tests of the worker alone may not); ``runtime_thread``: run the
    runtime's calls on a thread of their own (False: on the event loop, for a runtime in
    memory whose calls return at once, such as the simulator's, which many workers of one
    process share)."""

    def __init__(self, node: NodeGroups[Node], name: str, runtime: Runtime, *,
                 cell: str = model.DEFAULT_CELL, capacity: int = 10,
                 heartbeat_s: float | None = None, lease_s: float = lease.DEFAULT_LEASE_S,
                 reconcile_s: float = RECONCILE_S, state_dir: Path | None = None,
                 use_guard: bool = True, runtime_thread: bool = True) -> None:
        if capacity < 0:
            raise ValueError(f"a node's capacity must be >= 0, not {capacity}")
        if heartbeat_s is None:
            heartbeat_s = lease.beat_interval_s(lease_s)
        if lease_s < 4 * heartbeat_s:
            raise ValueError(f"a lease of {lease_s}s is too short for a heartbeat every "
                             f"{heartbeat_s}s: make it at least 4 heartbeats")
        self.node = node
        self.name = name
        self.cell = model.check_cell(cell)
        self.runtime = runtime
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self.reconcile_s = reconcile_s
        self.state_dir = state_dir or Path(f".crdt-ops-worker-{name}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pin_cell(self.state_dir, name, self.cell)
        self.lease_file = self.state_dir / lease.LEASE_FILE
        #: why this worker's epoch is new (what an earlier one left running is stopped
        #: before it is beaten), None when it kept its predecessor's
        self._leftovers: str | None = None
        self.lease = self._adopt(lease_s)
        self.use_guard = use_guard
        self._wake = asyncio.Event()
        self._retry_at: dict[str, tuple[float, float]] = {}  # cid -> (when, backoff)
        #: the beat written last, its confirm awaited: (written at, committed at, epoch)
        self._beat: tuple[float, float, str] | None = None
        self._last_beat = 0.0  # when the last beat was written (time.monotonic())
        self._beat_now = asyncio.Event()  # a new epoch: beat at once
        #: the thread the runtime's calls run on, one at a time (:meth:`_call`)
        self._calls = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"runtime-{name}") if runtime_thread else None
        #: the placements on this node, kept from change events (services/index.py)
        self.assigned = NodeRecords(name, prefix=model.placements(self.cell, name))
        #: the instances running here as last seen: container id -> pid (a full reconcile
        #: lists them all; an incremental one asks about the containers it reconciles)
        self._running: dict[str, int] = {}
        #: containers whose record changed since the last reconcile (this node's, or that
        #: were this node's)
        self._dirty: set[str] = set()
        node.groups.subscribe(self.assigned.prefix, self._changed)

    def _changed(self, event: ChangeEvent) -> None:
        """A placement on this node changed: keep it, and reconcile soon if it is (or
        was) assigned here and more than its reports changed (this worker's own writes: a
        report drifted from what runs is mended by the next full reconcile)."""
        cid = event.key[len(self.assigned.prefix):]
        had = cid in self.assigned.records
        self.assigned.changed(event)
        if (had or cid in self.assigned.records) and model.beyond_reports(event.old,
                                                                          event.new):
            self._dirty.add(cid)
            self._wake.set()

    def _adopt(self, lease_s: float) -> lease.Lease:
        """The lease of a worker that ran here before, if it still holds (a restart
        keeps the containers); else a new epoch, not beaten before :meth:`run` stopped what
        still runs here (``_leftovers`` says why)."""
        saved = lease.load(self.lease_file)
        now = time.monotonic()
        if saved is not None and saved.lease.may_run(now) and saved.lease.duration_s == lease_s:
            log.info("%s: keeping epoch %s (its lease holds for %.1fs more)", self.name,
                     saved.lease.epoch, saved.lease.deadline - now)
            lease.save(self.lease_file, saved.lease, os.getpid())  # the guard watches us now
            return saved.lease
        fresh = lease.Lease(lease.new_epoch(), lease_s)
        self._leftovers = ("no lease was saved" if saved is None else
                           f"--lease-s changed from {saved.lease.duration_s:g} to {lease_s:g}"
                           if saved.lease.may_run(now) else
                           f"the lease of epoch {saved.lease.epoch} ran out")
        lease.save(self.lease_file, fresh, os.getpid())  # not held: the guard stops them too
        return fresh

    def beat(self) -> None:
        """Write a heartbeat with this epoch and lease (and the capacity if it changed)."""
        rec = model.node(self.node.groups, self.cell, self.name)
        rec.register("heartbeat").set(int(time.time() * 1000))
        for field, value in (("capacity", self.capacity), ("epoch", self.lease.epoch),
                             ("lease_ms", int(self.lease.duration_s * 1000))):
            if rec.register(field).value != value:
                rec.register(field).set(value)

    def renew_lease(self, now: float) -> None:
        """Renew the lease from the beat written last once its confirm is seen (the rule:
        services/lease.py); a beat of an earlier epoch renews nothing. Wakes the reconcile
        when containers may run from now on that could not before."""
        beats = self.node.node_of(model.node_key(self.cell, self.name))  # its beats' group
        if self._beat is None or beats.confirmed_through() < self._beat[1] \
                or self.lease.lapsed(now):  # over for good, though still being ended
            return
        written, _, epoch = self._beat
        self._beat = None
        could = self.lease.may_run(now)
        if epoch == self.lease.epoch and self.lease.renew(written, now):
            lease.save(self.lease_file, self.lease, os.getpid())
            if not could and self.lease.may_run(now):
                self._wake.set()

    async def end_lapsed_epoch(self, now: float) -> None:
        """When the lease ran out: stop everything that runs here, then start a new epoch
        (beaten at once: :meth:`_beating` writes no beat for the lapsed one)."""
        if not self.lease.lapsed(now):
            return
        stopped = await self._stop_all()
        old = self.lease.epoch
        self.lease = lease.Lease(lease.new_epoch(), self.lease.duration_s)
        lease.save(self.lease_file, self.lease, os.getpid())
        self._last_beat, self._beat = 0.0, None
        self._beat_now.set()
        log.warning("%s: the lease of epoch %s ran out (no heartbeat confirmed in time "
                    "for %.0fs): its containers were stopped (%d more now); new epoch %s",
                    self.name, old, self.lease.duration_s, stopped, self.lease.epoch)

    async def _call(self, call: Callable[[], T]) -> T:
        """Run ``call`` (of the runtime) on this worker's runtime thread: one call at a
        time, in the order they are made, the event loop free meanwhile (for the beats
        that keep the lease, the deliveries, the reports); inline without that thread
        (``runtime_thread=False``)."""
        if self._calls is None:
            return call()
        return await asyncio.get_running_loop().run_in_executor(self._calls, call)

    async def _stop_all(self, announce: Callable[[int], None] = lambda n: None) -> int:
        """Stop everything the runtime runs (together), on its thread; ``announce`` is told
        how many first. Returns how many."""
        def stop_everything() -> int:
            running = self.runtime.running()
            if running:
                announce(len(running))
                self.runtime.stop_all(running, grace_s=self.lease.stop_wait_s)
            return len(running)
        stopped = await self._call(stop_everything)
        self._running.clear()
        return stopped

    async def reconcile(self, now: float | None = None,
                        only: Iterable[str] | None = None) -> int:
        """Make the runtime match the records; write what changed. Returns the writes.

        ``only=None`` (a *full* reconcile, the safety net run every ``reconcile_s``): every
        record assigned here and every instance the runtime runs (``Runtime.running()``),
        so that an instance that died or one no record wants is found. ``only``: just these
        container ids (the records that changed, the retries that are due), asking the
        runtime about each one (``Runtime.pid``): what a change costs does not grow with
        the containers this node runs (issue 13). Both apply one rule to each container
        (:func:`~services.converge.should_run`); after incremental reconciles of every
        change, a full one finds nothing to do (tests/services/test_worker.py). ``now``:
        ``time.monotonic()`` seconds (the lease and the retries' backoff).

        The runtime's side is one call off the event loop
        (:func:`~services.converge.converge`): what runs is looked up, what must not run is
        stopped (together), then what must run is started, each start checked against the
        rule again as it is made. The loop then records it and writes the reports
        (:meth:`_record`), also when this reconcile is cancelled meanwhile (after the
        call returned)."""
        now = time.monotonic() if now is None else now
        if not self.assigned.loaded:  # run() waits for its sliced pass; a direct call loads
            self.assigned.load(self.node.groups)  # them in one go
        if only is None:
            self._dirty.clear()
        if self.use_guard:  # before any start (here, on the loop: the beats call it too)
            guard.ensure(self.state_dir, self.runtime)
        records, everything = self.assigned.records, only is None
        placed = (dict(records) if only is None
                  else {cid: records.get(cid) for cid in set(only)})
        call = asyncio.ensure_future(self._call(lambda: converge(
            self.runtime, self.name, placed, now, everything=everything,
            records=lambda: self.assigned.records, held=lambda: self.lease,
            retry_at=self._retry_at)))
        try:
            done = await asyncio.shield(call)
        except asyncio.CancelledError:  # its starts and stops are made: record them first
            self._record(await call, now, everything=everything)
            raise
        return self._record(done, now, everything=everything)

    def _record(self, done: Converged, now: float, *, everything: bool) -> int:
        """After :func:`~services.converge.converge`: keep what runs, the retries' times,
        and write the reports (a container reported off once its stop returned; nothing
        for a placement removed meanwhile; a record changed meanwhile is reconciled again).
        Returns the writes."""
        if everything:
            self._running = done.running
        else:
            for cid in done.cids:
                if cid in done.running:
                    self._running[cid] = done.running[cid]
                else:
                    self._running.pop(cid, None)
        records = self.assigned.records
        writes = 0
        for cid in done.cids:
            if cid not in done.wanted:
                self._retry_at.pop(cid, None)
                if cid in records:
                    writes += self._report_off(cid)
        after = max(now, time.monotonic())  # a failed start's backoff counts from its end
        for cid in sorted(done.wanted):
            c = records.get(cid)
            if c is None or cid in done.passed_over:  # removed, or no more to run here,
                self._dirty.add(cid)                  # while earlier calls ran: next time
            elif cid in done.failed:
                _, backoff = self._retry_at.get(cid, (0.0, 0.5))
                self._retry_at[cid] = (after + backoff, min(backoff * 2, 30.0))
                self._report(cid, power_actual="failed", pid=None,
                             last_error=done.failed[cid])
                writes += 1
            elif cid in done.started:
                self._retry_at.pop(cid, None)
                pid, generation = done.started[cid]
                self._report(cid, power_actual="on", pid=pid, last_error=None,
                             started_generation=generation)
                writes += 1
            elif cid in done.running and c.started_generation == c.restart_generation \
                    and (c.power_actual != "on" or c.pid != done.running[cid]):
                self._report(cid, power_actual="on", pid=done.running[cid], last_error=None)
                writes += 1
        rec = model.node(self.node.groups, self.cell, self.name)
        if rec.register("running").value != len(self._running):
            rec.register("running").set(len(self._running))
        return writes

    async def reconcile_changes(self, now: float | None = None) -> int:
        """Reconcile the containers whose records changed since the last reconcile, and
        those whose retry after a failed start is due (an incremental :meth:`reconcile`).
        Returns the writes."""
        now = time.monotonic() if now is None else now
        due = {cid for cid, (when, _) in self._retry_at.items() if when <= now}
        if not (self._dirty or due):
            return 0
        dirty, self._dirty = self._dirty | due, set()
        return await self.reconcile(now, only=dirty)

    def _report_off(self, cid: str) -> int:
        """Report container ``cid`` off (it must not run here, and was stopped) unless it
        is. Returns the writes (0 or 1)."""
        c = self.assigned.records[cid]
        if c.power_actual != "off" or c.pid is not None:
            self._report(cid, power_actual="off", pid=None)
            return 1
        return 0

    def _report(self, cid: str, **fields: object) -> None:
        rec = model.report(self.node.groups, (self.cell, self.name), cid)
        for field, value in fields.items():
            if rec.register(field).value != value:
                rec.register(field).set(value)  # type: ignore[arg-type]

    async def run(self) -> None:
        """Beat and keep the lease (:meth:`_beating`), and reconcile
        (:meth:`_reconciling`), until cancelled or either fails (raised here)."""
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._leftovers is not None:  # before the new epoch's first beat: logic
                why = self._leftovers  # takes a new epoch for the end of the old one
                await self._stop_all(lambda n: log.warning(  # (services/liveness.py)
                    "%s: stopping %d containers before starting epoch %s (%s)", self.name, n,
                    self.lease.epoch, why))
                self._leftovers = None
            # this node's records from every record, in slices: now (the worker beats
            # meanwhile, but reconciles only once they are loaded: it would stop what it
            # missed), then every FULL_PASS_S
            tasks = [asyncio.create_task(full_passes(
                self.assigned, self.node.groups, every_s=FULL_PASS_S, wake=self._wake,
                name=f"{self.name}'s records")),
                asyncio.create_task(self._beating(), name=f"{self.name} beating"),
                asyncio.create_task(self._reconciling(), name=f"{self.name} reconciling")]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()
            if self._calls is not None:  # the call in flight returns before run() does:
                await asyncio.shield(asyncio.to_thread(self._calls.shutdown))  # none after

    def close(self) -> None:
        """Let the runtime's thread go once the call it runs returns (:meth:`run` does this
        as it ends, and returns once that call returned); no runtime call is made after."""
        if self._calls is not None:
            self._calls.shutdown(wait=False, cancel_futures=True)

    async def _beating(self) -> None:
        """Every ``heartbeat_s`` write a beat (:meth:`beat`) and commit it; renew the lease
        from each beat confirmed (:meth:`renew_lease`). None for an epoch whose lease ran
        out: the reconcile ends it (:meth:`end_lapsed_epoch`), and wakes this. Never waits
        for the runtime."""
        while True:
            self._beat_now.clear()
            try:
                now = time.monotonic()
                self.renew_lease(now)
                if self.lease.lapsed(now):
                    self._wake.set()
                elif now - self._last_beat >= self.heartbeat_s:
                    if self.use_guard:
                        guard.ensure(self.state_dir, self.runtime)
                    epoch, written = self.lease.epoch, time.monotonic()
                    self._last_beat = written
                    self.beat()
                    await self.node.flush()
                    self._beat = (written, time.monotonic(), epoch)
            except StoreUnavailable:  # logged by the store's node; the unsent beat was
                await self.node.store_works()  # dropped from memory: beat at once
                self._last_beat = 0.0
                continue
            await wait_set(self._beat_now, self.until_beat(time.monotonic()))

    async def _reconciling(self) -> None:
        """Reconcile the changes as they come, and everything every ``reconcile_s`` and
        when the lease starts or stops allowing containers to run; end a lapsed epoch."""
        last_full = 0.0
        allowed: tuple[str, bool] | None = None  # the lease's (epoch, may run) last time
        while True:
            try:
                await self.end_lapsed_epoch(time.monotonic())
                self._wake.clear()  # first: a change landing while we work wakes the next
                if self.assigned.loaded:
                    now = time.monotonic()
                    was, allowed = allowed, (self.lease.epoch, self.lease.may_run(now))
                    if now - last_full >= self.reconcile_s or allowed != was:
                        await self.reconcile(now)
                        last_full = now
                    else:
                        await self.reconcile_changes(now)
                await self.node.flush()
            except StoreUnavailable:  # logged by the store's node; unsent reports were
                await self.node.store_works()  # dropped from memory: reconcile at once
                last_full = 0.0
                continue
            # until its records are loaded no reconcile is due (the load wakes it)
            await wait_set(self._wake, self.idle_for(
                time.monotonic(), last_full if self.assigned.loaded else float("inf")))

    def idle_for(self, now: float, last_full: float) -> float:
        """Seconds the reconcile may sleep at ``now`` unless a change wakes it: until the
        next full reconcile, or the lease's next instant (``run_until``, when containers
        must stop; ``deadline``, when the epoch is over), whichever comes first
        (``last_full``: ``inf`` while no reconcile can be due). At least 10 ms. Waking only
        then spares an idle node the CPU of needless wake-ups."""
        due = last_full + self.reconcile_s
        for instant in (self.lease.run_until, self.lease.deadline):
            if instant > now:
                due = min(due, instant)
        return max(due - now, 0.01)

    def until_beat(self, now: float) -> float:
        """Seconds :meth:`_beating` may sleep at ``now`` unless woken: until the next beat;
        at most :data:`CONFIRM_POLL_S` while a beat awaits its confirm; ``heartbeat_s``
        while the lease has lapsed (the new epoch wakes it). At least 10 ms."""
        if self.lease.lapsed(now):
            return self.heartbeat_s
        due = self._last_beat + self.heartbeat_s
        if self._beat is not None:
            due = min(due, now + CONFIRM_POLL_S)
        return max(due - now, 0.01)
