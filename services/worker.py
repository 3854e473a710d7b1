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

The runtime's calls (listing, starting, stopping) run on threads of the worker's own
(``runtime_calls`` of them, :data:`RUNTIME_CALLS` unless told; a call that can only stop,
on :data:`STOP_CALLS` threads of their own), never two at once for one container: a
start that pulls an image (in its ``docker create``; each ``docker`` command may take up
to a minute), or the stop of a container that ignores SIGTERM (half the lease's grace, then
SIGKILL), holds up neither the event loop (the beats that keep the lease, the deliveries,
the reports) nor the node's other containers, and stops waiting out their grace hold up
no start. Each container whose record
changed is reconciled in a call of its own; a change to a container whose call is in flight
is looked at again when that call returns. A full reconcile lists what runs in one call,
then reconciles in that way each container the listing found at odds with its record
(each such call looks its container up again: :meth:`Worker.reconcile`). A container
is reported off once its stop returned; a start that its record or lease stopped allowing
while the calls before it ran is not made. When the lease runs out, no call begins, the
calls in flight are waited for, and then everything is stopped. A worker that starts a new
epoch stops what an earlier one left running before its first beat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from crdt_ops.events import ChangeEvent
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.store import StoreUnavailable
from crdt_ops.transport.waiting import wait_set
from services import guard, lease, model
from services.converge import Converged, at_odds, converge, should_run
from services.index import NodeRecords, full_passes
from services.runtime import Runtime, RuntimeError_

log = logging.getLogger("services.worker")
T = TypeVar("T")

#: Seconds between two rebuilds of the node's records from every record (a safety net).
#: Each rebuild, and the first at start, runs in slices (services/index.py ``full_passes``).
FULL_PASS_S = 60.0
#: Seconds between two full reconciles (the runtime's instances against the records): how
#: soon a container whose process died is found and started again. Local work only.
RECONCILE_S = 1.0


#: How many runtime calls a worker runs at once (each on a thread of its own, never two for
#: one container): so many slow starts or stops (an image's pull, a container that ignores
#: SIGTERM) hold up the node's other containers, not fewer.
RUNTIME_CALLS = 4
#: How many runtime calls that only stop containers may run at once, on threads of their
#: own: a stop waits out the grace of a container that ignores SIGTERM (half the lease's
#: grace, seconds), and stops sharing the ``runtime_calls`` threads held up every start
#: of the node behind a few of them. A thread that waits costs next to nothing.
STOP_CALLS = 32
#: What a runtime call that failed raises (the runtime's own error, or the OS's): said in
#: one line, and the call tried again later, not the end of the worker.
RUNTIME_FAILURES = (RuntimeError_, OSError)


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


def _failed(call: asyncio.Future[Converged], node: str, cid: str, retry_s: float) -> bool:
    """Whether the runtime call reconciling ``cid`` raised
    :class:`~services.runtime.RuntimeError_` or OSError (a lookup or a stop failed: an
    engine restarting), said in one line: the worker goes on, and its next full reconcile, in
    ``retry_s``, finds the container at odds again."""
    error = call.exception() if call.done() and not call.cancelled() else None
    if not isinstance(error, RUNTIME_FAILURES):
        return False
    log.warning("%s: reconciling %s failed: %s; trying again in %.0fs", node, cid, error,
                retry_s)
    return True


class Worker:
    """One node's worker, in cell ``cell`` (``node`` holds that cell's group). ``state_dir``:
    where its lease file and its guard's pid file live (the runtime's directory);
    ``lease_s``: the lease's length in seconds; ``heartbeat_s``: seconds between its beats
    (default ``services.lease.beat_interval_s(lease_s)``; at least 4 to a lease, else
    ValueError); ``reconcile_s``: seconds between full reconciles; ``use_guard``: run the
    guard process (tests of the worker alone may not); ``runtime_calls``: how many runtime
    calls run at once, each on a thread of the worker's (at least 1, else ValueError);
    ``runtime_thread``: run the runtime's calls on those threads (False: on the event
    loop, for a runtime in memory whose calls return at once, such as the simulator's,
    which many workers of one process share). A runtime must take calls for different
    containers from several threads at once (services/runtime.py)."""

    def __init__(self, node: NodeGroups[Node], name: str, runtime: Runtime, *,
                 cell: str = model.DEFAULT_CELL, capacity: int = 10,
                 heartbeat_s: float | None = None, lease_s: float = lease.DEFAULT_LEASE_S,
                 reconcile_s: float = RECONCILE_S, state_dir: Path | None = None,
                 use_guard: bool = True, runtime_calls: int = RUNTIME_CALLS,
                 runtime_thread: bool = True, hold_off_s: float = 0.0) -> None:
        if capacity < 0:
            raise ValueError(f"a node's capacity must be >= 0, not {capacity}")
        if heartbeat_s is None:
            heartbeat_s = lease.beat_interval_s(lease_s)
        if lease_s < 4 * heartbeat_s:
            raise ValueError(f"a lease of {lease_s}s is too short for a heartbeat every "
                             f"{heartbeat_s}s: make it at least 4 heartbeats")
        if runtime_calls < 1:
            raise ValueError(f"a worker runs at least 1 runtime call at a time, not "
                             f"{runtime_calls}")
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
        #: seconds a new epoch waits at least before its first beat (see :meth:`run`)
        self.hold_off_s = hold_off_s
        self.use_guard = use_guard
        self._wake = asyncio.Event()
        self._retry_at: dict[str, tuple[float, float]] = {}  # cid -> (when, backoff)
        #: the beat written last, its confirm awaited: (written at, committed at, epoch)
        self._beat: tuple[float, float, str] | None = None
        self._last_beat = 0.0  # when the last beat was written (lease.clock())
        self._beat_now = asyncio.Event()  # a new epoch: beat at once
        #: the threads the runtime's calls run on (:meth:`_call`)
        self._calls = concurrent.futures.ThreadPoolExecutor(
            runtime_calls, thread_name_prefix=f"runtime-{name}") if runtime_thread else None
        #: the threads of the calls that only stop (:data:`STOP_CALLS`)
        self._stops = concurrent.futures.ThreadPoolExecutor(
            STOP_CALLS, thread_name_prefix=f"runtime-stop-{name}") if runtime_thread else None
        #: the containers a runtime call is at work on (none is given a second call)
        self._busy: set[str] = set()
        #: > 0 while no runtime call may begin: the lease's end waits for the calls in
        #: flight, then stops everything
        self._held_back = 0
        #: the reconciles in flight as tasks of their own (:meth:`_spawn`), and the first
        #: error one of them raised, for :meth:`_reconciling` to raise
        self._inflight: set[asyncio.Task[Any]] = set()
        self._failed: BaseException | None = None
        #: one future per runtime call begun, done once what it did is recorded
        self._unrecorded: set[asyncio.Future[None]] = set()
        #: per full reconcile whose listing runs: the containers calls recorded since it
        #: began (what it lists of them may be out of date)
        self._listings: list[set[str]] = []
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
        #: the epoch of the lease this runtime directory had (None: none)
        self._saved_epoch = None if saved is None else saved.lease.epoch
        now = lease.clock()
        if saved is not None and saved.lease.may_run(now) and saved.lease.duration_s == lease_s:
            log.info("%s: keeping epoch %s (its lease holds for %.1fs more)", self.name,
                     saved.lease.epoch, saved.lease.deadline - now)
            lease.save(self.lease_file, saved.lease, os.getpid())  # the guard watches us now
            return saved.lease
        fresh = lease.Lease(lease.new_epoch(), lease_s, began=now)
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
            now = rec.register(field).value
            if now != value or type(now) is not type(value):  # (4000.0 == 4000: mend it)
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
        try:
            stopped = await self._stop_all()
        except RUNTIME_FAILURES as e:  # (the guard stops them too: services/guard.py)
            log.warning("%s: the lease of epoch %s ran out, and stopping its containers "
                        "failed: %s; trying again", self.name, self.lease.epoch, e)
            return
        old, held = self.lease.epoch, bool(self.lease.deadline)
        self.lease = lease.Lease(lease.new_epoch(), self.lease.duration_s, began=now)
        lease.save(self.lease_file, self.lease, os.getpid())
        self._last_beat, self._beat = 0.0, None
        self._beat_now.set()
        if held:
            log.warning("%s: the lease of epoch %s ran out (no heartbeat confirmed in time "
                        "for %.0fs): its containers were stopped (%d more now); new epoch %s",
                        self.name, old, self.lease.duration_s, stopped, self.lease.epoch)
        else:
            log.warning("%s: epoch %s never held its lease (no heartbeat confirmed within "
                        "%.1fs of being written, for %.0fs: a slow broker?); new epoch %s, so "
                        "that logic places anew what it placed there", self.name, old,
                        self.lease.confirm_within_s, self.lease.duration_s, self.lease.epoch)

    def _call(self, call: Callable[[], T], stops_only: bool = False) -> asyncio.Future[T]:
        """Begin ``call`` (of the runtime) on one of this worker's runtime threads, at once
        (on this turn of the event loop), and return its future: the loop goes on meanwhile
        (the beats that keep the lease, the deliveries, the reports). ``stops_only``: the
        call can only stop containers, and runs on the stops' threads (:data:`STOP_CALLS`),
        so that starts never wait behind the grace of containers that ignore SIGTERM.
        Without those threads (``runtime_thread=False``) it runs inline, and the future is
        done. The callers see to it that no two calls for one container run at once."""
        pool = self._stops if stops_only else self._calls
        if pool is not None:
            return asyncio.get_running_loop().run_in_executor(pool, call)
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(call())
        except Exception as e:
            done.set_exception(e)
        return done

    async def _stop_all(self, announce: Callable[[int], None] = lambda n: None) -> int:
        """Stop everything the runtime runs (together), on a runtime thread, once every
        call begun returned and what it did was recorded, no call beginning meanwhile;
        ``announce`` is told how many first. Returns how many."""
        def stop_everything() -> int:
            running = self.runtime.running()
            if running:
                announce(len(running))
                self.runtime.stop_all(running, grace_s=self.lease.stop_wait_s)
            return len(running)
        self._held_back += 1
        try:
            while self._unrecorded:  # (their starts checked the lease as they were made)
                await asyncio.wait(set(self._unrecorded))
            stopped = await self._call(stop_everything)  # begun on the turn of the check
        finally:
            self._held_back -= 1
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
        ``lease.clock()`` seconds (the lease and the retries' backoff).

        The runtime's side runs off the event loop, in calls that run at once, never two
        for one container: each container of ``only`` in a call of its own
        (:func:`~services.converge.converge`), which looks it up, then stops or starts it;
        a container another call is at work on is left for when that call returns
        (:meth:`reconcile_changes`). A full reconcile lists what runs in one call, then
        reconciles in that way each container the listing found at odds with its record
        (:func:`~services.converge.at_odds`): as each such call looks its container up
        again, a listing out of date (a container started or stopped while it ran) costs a
        look-up, not a second start or stop. Each start is checked against the rule again
        as it is made. The loop records what each call did and writes the reports
        (:meth:`_record`), also when this reconcile is cancelled meanwhile (after the call
        returned)."""
        now = lease.clock() if now is None else now
        if not self.assigned.loaded:  # run() waits for its sliced pass; a direct call loads
            self.assigned.load(self.node.groups)  # them in one go
        calls = (self._begin_calls(only, now) if only is not None
                 else await self._begin_full(now))
        return await self._writes_of(calls)

    @staticmethod
    async def _writes_of(calls: list[asyncio.Task[int]]) -> int:
        """The writes ``calls`` made, once they all ended. Cancelled meanwhile, it still
        waits for them (each records what its call did), then raises CancelledError."""
        if not calls:
            return 0
        try:
            return sum(await asyncio.shield(asyncio.gather(*calls)))
        except asyncio.CancelledError:
            await asyncio.wait(calls)
            raise

    async def _begin_full(self, now: float) -> list[asyncio.Task[int]]:
        """A full reconcile up to its calls: list what runs (one call), then begin a call
        for each container at odds with its record (:meth:`_begin_calls`) and return their
        tasks, without waiting for them: a slow one (an image's pull) holds up neither the
        next full reconcile nor the lease's instants. A container another call recorded
        while the listing ran is left alone (the listing may be out of date for it); one a
        call is at work on is looked at once that call returned. None while calls are held
        back."""
        if self._held_back:  # the lease's end stops everything, or the worker stops
            return []
        listed, recorded = self._begin(self.runtime.running)
        touched: set[str] = set()  # what calls record while the listing runs
        self._listings.append(touched)
        try:
            try:
                running = await listed
            except RUNTIME_FAILURES as e:  # (an engine restarting): the next full one tries
                log.warning("%s: listing what runs failed: %s; trying again in %.0fs",
                            self.name, e, self.reconcile_s)
                return []
            finally:
                self._listings.remove(touched)
            skip = touched | self._busy
            for cid in self._running.keys() - skip - running.keys():
                del self._running[cid]
            self._running.update((cid, pid) for cid, pid in running.items() if cid not in skip)
            self._count_running()
            records, held = self.assigned.records, self.lease
            odd = [cid for cid in sorted((running.keys() | records.keys()) - touched)
                   if at_odds(records.get(cid), running.get(cid), held, now,
                              self._retry_at.get(cid))]
        finally:
            recorded.set_result(None)
        return self._begin_calls(odd, now)

    def _begin_calls(self, cids: Iterable[str], now: float) -> list[asyncio.Task[int]]:
        """Begin a runtime call (an incremental reconcile) for each of ``cids`` that no call
        is at work on (none while the lease's end holds calls back); the others are left
        in ``_dirty``, looked at again when the call ahead of them returns. Returns the
        tasks that record what each call did, each of which returns the writes it made."""
        cids = set(cids)
        free = sorted(cids - self._busy) if not self._held_back else []
        self._dirty |= cids.difference(free)
        if free and self.use_guard:  # before any start (here, on the loop: the beats call
            guard.ensure(self.state_dir, self.runtime)  # it too)
        records = self.assigned.records
        tasks = []
        for cid in free:
            self._busy.add(cid)
            placed = records.get(cid)
            result, recorded = self._begin(functools.partial(
                converge, self.runtime, self.name, {cid: placed}, now,
                records=lambda: self.assigned.records, held=lambda: self.lease,
                retry_at=self._retry_at),
                stops_only=not should_run(placed, self.lease, now))  # (converge's rule)
            tasks.append(self._spawn(self._finish(cid, result, recorded, now),
                                     f"{self.name} reconciling {cid}"))
        return tasks

    def _spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """``work`` as a task of its own, in ``_inflight`` until it ends; the first error a
        task raises is kept for :meth:`_reconciling` to raise (and ``_wake`` set)."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._inflight.add(task)

        def ended(t: asyncio.Task[T]) -> None:
            self._inflight.discard(t)
            if t.cancelled() or (error := t.exception()) is None:
                return
            if self._failed is None:
                self._failed = error
                self._wake.set()
            else:  # the first one ends the worker; the others are said here
                log.error("%s: %s failed as well", self.name, t.get_name(), exc_info=error)
        task.add_done_callback(ended)
        return task

    def _begin(self, call: Callable[[], T], stops_only: bool = False
               ) -> tuple[asyncio.Future[T], asyncio.Future[None]]:
        """Begin runtime call ``call`` at once (:meth:`_call`, with ``stops_only``); returns
        its result, and a future for the caller to set once it recorded what the call did:
        until then the lease's end waits for it (``_unrecorded``, :meth:`_stop_all`)."""
        result = self._call(call, stops_only)
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unrecorded.add(recorded)
        recorded.add_done_callback(self._unrecorded.discard)
        return result, recorded

    async def _finish(self, cid: str, result: asyncio.Future[Converged],
                      recorded: asyncio.Future[None], now: float) -> int:
        """Wait for container ``cid``'s call (begun by :meth:`_begin_calls`, which marked it
        busy), record what it did (:meth:`_record`), also if cancelled meanwhile; release
        the container; wake the reconcile loop if changes were left for it meanwhile;
        flush the reports. Returns the writes."""
        try:
            try:
                done = await asyncio.shield(result)
            except asyncio.CancelledError:  # its starts and stops are made: record them,
                while not result.done():  # however often this is cancelled meanwhile
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({result})
                if not _failed(result, self.name, cid, self.reconcile_s):
                    self._record(result.result(), now)  # (raises if the call was dropped)
                raise
            except RUNTIME_FAILURES:
                _failed(result, self.name, cid, self.reconcile_s)
                return 0
            writes = self._record(done, now)
        finally:
            recorded.set_result(None)
            self._busy.discard(cid)
            if self._dirty:  # left for when this call returned
                self._wake.set()
        await self.node.flush()  # its reports go out now, not on the loop's next turn
        return writes

    def _record(self, done: Converged, now: float) -> int:
        """After :func:`~services.converge.converge`: keep what runs, the retries' times,
        and write the reports (a container reported off once its stop returned; nothing
        for a placement removed meanwhile; a record changed meanwhile is reconciled again).
        Returns the writes."""
        for touched in self._listings:
            touched.update(done.cids)
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
        after = max(now, lease.clock())  # a failed start's backoff counts from its end
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
        self._count_running()
        return writes

    def _count_running(self) -> None:
        """Write how many instances run here (as last seen) into the node's record."""
        rec = model.node(self.node.groups, self.cell, self.name)
        if rec.register("running").value != len(self._running):
            rec.register("running").set(len(self._running))

    async def reconcile_changes(self, now: float | None = None) -> int:
        """Reconcile the containers whose records changed since the last reconcile, and
        those whose retry after a failed start is due (an incremental :meth:`reconcile`),
        and wait for those calls. Returns the writes."""
        return await self._writes_of(
            self._begin_changes(lease.clock() if now is None else now))

    def _begin_changes(self, now: float) -> list[asyncio.Task[int]]:
        """Begin the runtime calls of :meth:`reconcile_changes` (:meth:`_begin_calls`)."""
        due = {cid for cid, (when, _) in self._retry_at.items() if when <= now}
        if not (self._dirty or due):
            return []
        if not self.assigned.loaded:
            self.assigned.load(self.node.groups)
        dirty, self._dirty = self._dirty | due, set()
        return self._begin_calls(dirty, now)

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
            why = self._leftovers  # before the new epoch's first beat: logic takes a new
            while self._leftovers is not None:  # epoch for the end of the old one
                try:
                    await self._stop_all(lambda n: log.warning(  # (services/liveness.py)
                        "%s: stopping %d containers before starting epoch %s (%s)",
                        self.name, n, self.lease.epoch, why))
                except RUNTIME_FAILURES as e:  # (an engine restarting)
                    log.warning("%s: stopping what an earlier epoch left running failed: "
                                "%s; trying again in %.0fs", self.name, e, self.reconcile_s)
                    await asyncio.sleep(self.reconcile_s)
                    continue
                self._leftovers = None
            hold = max(self.hold_off_s, self._predecessor_s()) if why is not None else 0.0
            if hold > 0:
                was = self._node_record()
                # another process ran this node (a standby took over, a worker elsewhere
                # replaced a killed one): its guard runs its containers until its lease
                # ends, at most a lease after its last beat, which came before now; a new
                # epoch announced sooner would have logic place them anew meanwhile
                log.warning("%s: another process ran this node (epoch %s); its lease may "
                            "hold for %.0fs more: epoch %s begins then", self.name,
                            was.epoch if was is not None else None, hold, self.lease.epoch)
                await asyncio.sleep(hold)
                self.lease.began = lease.clock()  # (it holds from its first beat on)
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
            self.close()  # the calls no thread took yet are dropped; the others return,
            await asyncio.gather(*self._inflight, return_exceptions=True)  # and are recorded
            if self._failed is not None:  # failed as the worker stopped: said, not raised
                log.error("%s: a reconcile failed as the worker stopped", self.name,
                          exc_info=self._failed)
            for pool in self._pools():  # the calls in flight return before run() does:
                await asyncio.shield(asyncio.to_thread(pool.shutdown))  # none after

    def _node_record(self) -> model.Node | None:
        """This node's record as this worker's replica has it (None: none)."""
        key = model.node_key(self.cell, self.name)
        rec = self.node.groups.get(key)
        return model.Node.of(key, rec) if isinstance(rec, dict) else None

    def _predecessor_s(self) -> float:
        """Seconds the containers of another process's epoch of this node may still run
        here or elsewhere: when the node's record names an epoch this runtime directory
        never had (a worker elsewhere ran the node, a standby takes over, this directory is
        new), that epoch's lease and a second (its own length when unreadable): its guard
        runs them until it ends, at most that long after its last beat, which came before
        now. 0 when the record names no such epoch: what ran here this worker stopped."""
        n = self._node_record()
        if n is None or not n.epoch or n.epoch in (self.lease.epoch, self._saved_epoch):
            return 0.0
        return (n.lease_s or self.lease.duration_s) + 1.0

    def close(self) -> None:
        """Let the runtime's threads go once the calls they run return, and drop those no
        thread took yet (:meth:`run` does this as it ends, and returns once those calls
        returned); no runtime call begins after."""
        self._held_back += 1
        for pool in self._pools():
            pool.shutdown(wait=False, cancel_futures=True)

    def _pools(self) -> list[concurrent.futures.ThreadPoolExecutor]:
        """The worker's runtime threads: its calls', its stops' (none inline)."""
        return [p for p in (self._calls, self._stops) if p is not None]

    async def _beating(self) -> None:
        """Every ``heartbeat_s`` write a beat (:meth:`beat`) and commit it; renew the lease
        from each beat confirmed (:meth:`renew_lease`). None for an epoch whose lease ran
        out: the reconcile ends it (:meth:`end_lapsed_epoch`), and wakes this. Never waits
        for the runtime."""
        while True:
            self._beat_now.clear()
            try:
                now = lease.clock()
                self.renew_lease(now)
                if self.lease.lapsed(now):
                    self._wake.set()
                elif now - self._last_beat >= self.heartbeat_s:
                    if self.use_guard:
                        guard.ensure(self.state_dir, self.runtime)
                    epoch, written = self.lease.epoch, lease.clock()
                    self._last_beat = written
                    self.beat()
                    await self.node.flush()
                    self._beat = (written, time.monotonic(), epoch)  # (the transport's clock)
            except StoreUnavailable:  # logged by the store's node; the unsent beat was
                await self.node.store_works()  # dropped from memory: beat at once
                self._last_beat = 0.0
                continue
            await wait_set(self._beat_now, self.until_beat(lease.clock()))

    async def _reconciling(self) -> None:
        """Reconcile the changes as they come, and everything every ``reconcile_s`` and
        when the lease starts or stops allowing containers to run; end a lapsed epoch.
        The reconciles run as tasks of their own (:meth:`_spawn`), this loop waiting for
        none of them; it is woken when one left changes for it or a full one's listing
        ended, and raises what one raised."""
        last_full = 0.0
        allowed: tuple[str, bool] | None = None  # the lease's (epoch, may run) last time
        full: asyncio.Task[list[asyncio.Task[int]]] | None = None
        while True:
            try:
                await self.end_lapsed_epoch(lease.clock())
                self._wake.clear()  # first: a change landing while we work wakes the next
                failed, self._failed = self._failed, None
                if failed is not None:
                    raise failed
                if self.assigned.loaded:
                    now = lease.clock()
                    state = (self.lease.epoch, self.lease.may_run(now))
                    if (full is None or full.done()) and (
                            now - last_full >= self.reconcile_s or state != allowed):
                        allowed, last_full = state, now
                        full = self._spawn(self._begin_full(now), f"{self.name} listing")
                        full.add_done_callback(lambda _: self._wake.set())
                    self._begin_changes(now)
                await self.node.flush()
            except StoreUnavailable:  # logged by the store's node; unsent reports were
                await self.node.store_works()  # dropped from memory: reconcile at once
                last_full = 0.0
                continue
            # until its records are loaded no reconcile is due (the load wakes it), nor while
            # a full one lists (its end wakes it)
            due = self.assigned.loaded and (full is None or full.done())
            await wait_set(self._wake, self.idle_for(
                lease.clock(), last_full if due else float("inf")))

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
