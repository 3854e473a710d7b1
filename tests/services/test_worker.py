"""The worker's incremental reconcile (issue 13): reconciling only the containers whose
placements changed leaves nothing for a full reconcile to do, and never lists what the
runtime runs (its cost does not grow with the containers a node runs). The worker holds
its cell's group only; "logic" here writes the placements as logic does (its copies of
power_desired and restart_generation, and the assignment)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops.handles import MapHandle
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import lease, model
from services.runtime import RuntimeError_, StartWithdrawn
from services.worker import Worker
from tests.support import cell_only


class CountingRuntime:
    """A runtime in memory (the worker's OS processes are tested over the real services
    in test_services.py): counts how often the worker lists everything. Its counts are
    kept under a lock: the worker calls it from several threads."""

    def __init__(self) -> None:
        self.instances: dict[str, int] = {}
        self.listings = self.lookups = 0
        self.starts = self.stops = 0
        self.next_pid = 1000
        self.failing: set[str] = set()
        self.generations: dict[str, int] = {}
        self.lock = threading.Lock()

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        self.stop(cid)  # as every runtime does: the old instance goes, also if this fails
        if not may_start():
            raise StartWithdrawn(cid)
        if cid in self.failing:
            raise RuntimeError_(f"{cid} does not start")
        with self.lock:
            self.starts += 1
            self.next_pid += 1
            self.instances[cid] = self.next_pid
            self.generations[cid] = generation
            return self.next_pid

    def generation(self, cid: str) -> int | None:
        with self.lock:
            return self.generations.get(cid) if cid in self.instances else None

    def stop(self, cid: str, grace_s: float = 5.0) -> None:
        with self.lock:
            if self.instances.pop(cid, None) is not None:
                self.stops += 1

    def stop_all(self, cids: Iterable[str], grace_s: float = 5.0) -> None:
        for cid in list(cids):
            self.stop(cid, grace_s)

    def running(self) -> dict[str, int]:
        with self.lock:
            self.listings += 1
            return dict(self.instances)

    def pid(self, cid: str) -> int | None:
        with self.lock:
            self.lookups += 1
            return self.instances.get(cid)

    def guard_args(self) -> list[str]:
        return []

    def adopt_strays(self) -> dict[str, int]:
        return {}  # nothing runs unrecorded here


# one step: (what, container index, a value)
STEPS = st.lists(st.tuples(
    st.sampled_from(["create", "desired", "restart", "place", "place-old-epoch",
                     "place-elsewhere", "unplace", "delete", "fail", "heal"]),
    st.integers(0, 2), st.booleans()), max_size=40)


async def _settle(*nodes: NodeGroups[MemoryNode]) -> None:
    for n in nodes:
        await n.flush()
    for _ in range(6):  # the bus delivers on later loop iterations; writes echo once more
        await asyncio.sleep(0)
        for n in nodes:
            await n.flush()


async def _platform(tmp: Path, runtime_calls: int = 4
                    ) -> tuple[NodeGroups[MemoryNode], NodeGroups[MemoryNode],
                               CountingRuntime, Worker, float]:
    """logic and node n1's worker in the default cell's group, on a memory bus, the
    worker's lease held (for a long time) from the time returned; ``runtime_calls``: the
    worker's."""
    bus = MemoryBus()
    logic, wn = (cell_only(MemoryNode(bus, rid, policy=model.POLICY))
                 for rid in ("logic", "worker.n1"))
    for n in (logic, wn):
        await n.start()
    runtime = CountingRuntime()
    worker = Worker(wn, "n1", runtime, state_dir=tmp, use_guard=False, lease_s=1e6,
                    runtime_calls=runtime_calls)
    now = lease.clock()
    worker.lease.renew(now, now)
    return logic, wn, runtime, worker, now


#: Where the tests place containers: node n1 of the default cell (a placement there that
#: names another node is not n1's to run).
HOME = (model.DEFAULT_CELL, "n1")


def placed(records: NodeGroups[MemoryNode]) -> list[model.Container]:
    """The placements of the default cell, as the worker sees them."""
    return [model.Container.of(k, v) for k, v in
            records.groups.items(model.placements(model.DEFAULT_CELL)) if v]


def _placed_on_n1(logic: NodeGroups[MemoryNode], worker: Worker, cid: str) -> MapHandle:
    """Container ``cid`` placed on n1's current epoch, to run, as logic writes it; its
    placement."""
    rec = model.placement(logic.groups, HOME, cid)
    rec.register("power_desired").set("on")
    rec.register("assigned_node").set("n1")
    rec.register("assigned_epoch").set(worker.lease.epoch)
    return rec


async def _run(steps: list[tuple[str, int, bool]], tmp: Path) -> None:
    logic, wn, runtime, worker, now = await _platform(tmp)
    await worker.reconcile(now)  # loads the (empty) records
    listings = runtime.listings
    for what, i, flag in steps:
        cid = f"c{i}"
        rec = model.placement(logic.groups, HOME, cid)
        if what in ("create", "desired"):
            rec.register("power_desired").set("on" if flag else "off")
        elif what == "restart":
            g = rec.register("restart_generation")
            g.set((g.value or 0) + 1)
        elif what == "delete":
            logic.groups.remove(model.placement_key(HOME, cid))
        elif what == "fail":
            runtime.failing.add(cid)
        elif what == "heal":
            runtime.failing.discard(cid)
        else:
            node = "n2" if what == "place-elsewhere" else "n1"
            epoch = "old" if what == "place-old-epoch" else worker.lease.epoch
            if what == "unplace":
                rec.register("assigned_node").set(None)
            else:
                rec.register("assigned_node").set(node)
                rec.register("assigned_epoch").set(epoch)
        await _settle(logic, wn)
        await worker.reconcile_changes(now + (100.0 if flag else 0.0))  # retries due, or not
        await _settle(logic, wn)
        await worker.reconcile_changes(now)
        await _settle(logic, wn)
    assert runtime.listings == listings, "an incremental reconcile listed every instance"
    runtime.failing.clear()
    later = now + 1000.0
    await worker.reconcile_changes(later)  # the retries still owed
    await _settle(logic, wn)
    await worker.reconcile_changes(later)
    await _settle(logic, wn)
    starts, stops = runtime.starts, runtime.stops
    assert await worker.reconcile(later) == 0, \
        "a full reconcile found writes the changes missed"
    assert (runtime.starts, runtime.stops) == (starts, stops)
    should = {c.id for c in placed(wn)
              if c.assigned_node == "n1" and c.assigned_epoch == worker.lease.epoch
              and c.power_desired == "on"}
    assert set(runtime.instances) == should
    for c in placed(wn):
        if c.assigned_node == "n1":
            assert (c.power_actual == "on") == (c.id in should), c
            assert c.pid == runtime.instances.get(c.id)
    worker.close()


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_reconciling_changes_leaves_nothing_for_a_full_reconcile(
        steps: list[tuple[str, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(steps, Path(tmp)))


def test_an_instance_that_died_is_found_by_the_full_reconcile(tmp_path: Path) -> None:
    async def run() -> None:
        logic, wn, runtime, worker, now = await _platform(tmp_path)
        _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        await worker.reconcile(now)
        await _settle(logic, wn)
        assert await worker.reconcile_changes(now) == 0  # its own report changed the record
        first = runtime.instances.pop("c")  # it died: no record changed
        assert await worker.reconcile_changes(now) == 0
        assert await worker.reconcile(now) == 1
        assert runtime.instances["c"] != first
        await _settle(logic, wn)
        assert placed(wn)[0].pid == runtime.instances["c"]
        worker.close()
    asyncio.run(run())


def test_a_worker_beats_five_times_a_lease_unless_told(tmp_path: Path) -> None:
    wn = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
    worker = Worker(wn, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                    lease_s=30)
    assert worker.heartbeat_s == 6 and worker.reconcile_s == 1
    with pytest.raises(ValueError, match="at least 4 heartbeats"):
        Worker(wn, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False, lease_s=30,
               heartbeat_s=8)


def test_an_idle_worker_sleeps_until_its_next_duty(tmp_path: Path) -> None:
    """No wake-up without a reason. Its reconcile: the next full reconcile or lease instant;
    its beats: the next beat, or a poll for the confirm of a beat written."""
    from services.worker import CONFIRM_POLL_S

    wn = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
    worker = Worker(wn, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                    lease_s=30, reconcile_s=5.0)
    now = 100.0
    worker.lease = lease.Lease("e1", 30.0, deadline=now + 20)  # run_until now + 17
    assert worker.idle_for(now, last_full=now) == pytest.approx(5.0)
    assert worker.idle_for(now, last_full=float("inf")) == pytest.approx(17.0)
    worker.lease = lease.Lease("e1", 30.0, deadline=now + 4)  # containers stop at +1
    assert worker.idle_for(now, last_full=now) == pytest.approx(1.0)
    worker.lease = lease.Lease("e1", 30.0, deadline=now + 20)
    worker._last_beat = now - 4  # beat due at +2 (every 6 s)
    assert worker.until_beat(now) == pytest.approx(2.0)
    worker._beat = (now, now, "e1")  # written, its confirm awaited
    assert worker.until_beat(now) == CONFIRM_POLL_S
    worker._beat = None
    worker._last_beat = now - 10
    assert worker.until_beat(now) == 0.01  # overdue
    worker.lease = lease.Lease("e1", 30.0, deadline=now - 1)  # lapsed: the new epoch wakes it
    assert worker.until_beat(now) == pytest.approx(6.0)
    worker.close()


def test_a_worker_reconciles_again_for_logic_s_changes_not_for_its_own_reports(
        tmp_path: Path) -> None:
    """Its report of a start (its own write) leaves nothing to reconcile: no pass is woken
    for it, ahead of the report's publishing; a change of logic's copy wakes one."""
    async def run() -> None:
        logic, wn, runtime, worker, now = await _platform(tmp_path)
        rec = _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        worker._wake.clear()
        assert await worker.reconcile_changes(now) == 1  # started, reported
        assert runtime.starts == 1
        await _settle(logic, wn)
        assert placed(wn)[0].power_actual == "on"
        assert not worker._wake.is_set(), "its own report woke another reconcile"
        rec.register("power_desired").set("off")  # logic's copy changed
        await _settle(logic, wn)
        assert worker._wake.is_set()
        assert await worker.reconcile_changes(now) == 1 and runtime.stops == 1
        worker.close()
    asyncio.run(run())


def _failing_once(node: NodeGroups[MemoryNode]) -> list[int]:
    """Make ``node.flush()`` raise StoreUnavailable once (what a node's flush does while
    its store fails for a moment); returns the count of flushes, failed one included."""
    from crdt_ops.transport.store import StoreUnavailable

    real, calls = node.flush, [0]

    async def flaky() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreUnavailable("store x.sqlite: database is locked")
        await real()
    node.flush = flaky  # type: ignore[method-assign]
    return calls


def test_a_worker_rides_out_a_store_failure(tmp_path: Path) -> None:
    """A store failing for a moment used to end ``Worker.run`` for good, the process up:
    no beat again, its lease lapsed and its containers stopped."""
    async def run() -> None:
        wn = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
        await wn.start()
        worker = Worker(wn, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                        lease_s=2.0, reconcile_s=0.05)
        flushes = _failing_once(wn)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(1.0)
        assert not task.done(), f"Worker.run ended: {task.exception()!r}"
        task.cancel()
        assert flushes[0] >= 3  # the failed one, then beats and reconciles went on
        beat = model.node(wn.groups, model.DEFAULT_CELL, "n1").register("heartbeat").value
        assert beat is not None and beat >= (time.time() - 1.5) * 1000
    asyncio.run(run())


class DownRuntime(CountingRuntime):
    """Its listings and look-ups fail while ``down`` (an engine restarting: ``docker ps``
    and ``docker inspect`` cannot connect)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.failed = 0

    def _check(self) -> None:
        if self.down:
            self.failed += 1
            raise RuntimeError_("docker ps failed: Cannot connect to the Docker daemon")

    def running(self) -> dict[str, int]:
        self._check()
        return super().running()

    def pid(self, cid: str) -> int | None:
        self._check()
        return super().pid(cid)


def test_a_worker_rides_out_a_runtime_that_fails_for_a_while(tmp_path: Path) -> None:
    """A runtime call that failed (a listing, a look-up, the stop of what an earlier epoch
    left) ended ``Worker.run``: with the Docker runtime, an engine restarting for a moment
    stopped the worker's beats, its lease ran out, and logic moved every container of its
    node."""
    async def until(check: Callable[[], bool], what: str) -> None:
        for _ in range(300):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {what} in 3 s")

    async def run() -> None:
        logic, wn, _, _, _ = await _platform(tmp_path)
        runtime = DownRuntime()  # down as the worker starts: its leftovers' stop fails
        worker = Worker(wn, "n1", runtime, state_dir=tmp_path, use_guard=False, lease_s=1e6,
                        reconcile_s=0.05)
        now = lease.clock()
        worker.lease.renew(now, now)
        rec = _placed_on_n1(logic, worker, "c1")
        await _settle(logic, wn)
        task = asyncio.create_task(worker.run())
        await until(lambda: runtime.failed >= 3 or task.done(), "failed calls")
        assert not task.done(), f"Worker.run ended: {task.exception()!r}"
        runtime.down = False
        await until(lambda: "c1" in runtime.instances, "start of c1")
        runtime.down, runtime.failed = True, 0  # its look-ups and listings fail now
        rec.register("power_desired").set("off")
        await _settle(logic, wn)
        await until(lambda: runtime.failed >= 3 or task.done(), "failed calls")
        assert not task.done(), f"Worker.run ended: {task.exception()!r}"
        assert "c1" in runtime.instances
        runtime.down = False  # the engine is back: the next full reconcile stops c1
        await until(lambda: not runtime.instances, "stop of c1")
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        worker.close()
    asyncio.run(run())


class SlowRuntime(CountingRuntime):
    """Its starts, or its listings, block for ``seconds`` (a ``docker run`` pulling an
    image, a ``docker ps`` on a busy engine)."""

    def __init__(self, start_s: float = 0.0, list_s: float = 0.0) -> None:
        super().__init__()
        self.start_s, self.list_s = start_s, list_s

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        time.sleep(self.start_s)
        return super().start(cid, generation, may_start)

    def running(self) -> dict[str, int]:
        time.sleep(self.list_s)
        return super().running()


def test_a_start_longer_than_the_lease_holds_up_neither_the_beats_nor_the_lease(
        tmp_path: Path) -> None:
    """A runtime call used to block the worker's event loop: a start (an image's pull)
    longer than the lease stopped the beats, the lease ran out, and every container of the
    node was stopped for a new epoch."""
    async def run() -> None:
        bus = MemoryBus()
        logic, wn = (cell_only(MemoryNode(bus, rid, policy=model.POLICY))
                     for rid in ("logic", "worker.n1"))
        for n in (logic, wn):
            await n.start()
        runtime = SlowRuntime(start_s=3.0)  # 1.5 leases
        worker = Worker(wn, "n1", runtime, state_dir=tmp_path, use_guard=False, lease_s=2.0,
                        reconcile_s=0.2)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(100):
                if worker.lease.may_run(lease.clock()):
                    break
                await asyncio.sleep(0.02)
            epoch = worker.lease.epoch
            _placed_on_n1(logic, worker, "c")
            await _settle(logic, wn)
            node = model.node(wn.groups, model.DEFAULT_CELL, "n1")
            beats: set[int | None] = set()
            began = time.monotonic()
            while runtime.starts == 0 and time.monotonic() - began < 10:
                beats.add(node.register("heartbeat").value)
                await asyncio.sleep(0.05)
            assert runtime.starts == 1
            assert worker.lease.deadline > began + 2.0, "no beat renewed the lease meanwhile"
            assert len(beats) >= 5, f"{len(beats)} beats in a 3 s start (every 0.4 s)"
            await asyncio.sleep(0.3)
            assert worker.lease.epoch == epoch and runtime.stops == 0
            await asyncio.sleep(0.3)
            await _settle(logic, wn)
            assert [(c.power_actual, c.pid) for c in placed(wn)] == [
                ("on", runtime.instances["c"])]
            assert not task.done(), task
        finally:
            task.cancel()
    asyncio.run(run())


def test_a_start_its_lease_stopped_allowing_while_earlier_calls_ran_is_not_made(
        tmp_path: Path) -> None:
    """The decision to start is taken with the lease of its reconcile; the start runs after
    the calls ahead of it, and is not made once its lease no longer allows it."""

    async def run() -> None:
        logic, wn, _, worker, _ = await _platform(tmp_path)
        worker.runtime = runtime = SlowRuntime(list_s=1.0)
        _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        # containers may run for 0.5 s more: the listing (1 s) outlasts that
        worker.lease = lease.Lease(worker.lease.epoch, 12.0, deadline=lease.clock() + 3.5)
        assert await worker.reconcile(lease.clock()) == 0
        assert runtime.starts == 0 and "c" in worker._dirty
        await _settle(logic, wn)
        assert placed(wn)[0].power_actual != "on"  # not reported started
        worker.close()
    asyncio.run(run())


def test_a_start_its_record_stopped_allowing_while_earlier_calls_ran_is_not_made(
        tmp_path: Path) -> None:
    """With one runtime call at a time, c2's and c3's calls wait behind c1's slow start;
    meanwhile c2's placement is removed and c3 is switched off: neither is started nor
    reported on (a report would write c2's removed placement back), and both are looked at
    again."""
    async def run() -> None:
        logic, wn, _, worker, now = await _platform(tmp_path, runtime_calls=1)
        worker.runtime = runtime = SlowRuntime(start_s=1.0)
        for cid in ("c1", "c2", "c3"):
            _placed_on_n1(logic, worker, cid)
        await _settle(logic, wn)
        reconciling = asyncio.create_task(worker.reconcile(now))
        await asyncio.sleep(0.3)  # c1 starting
        logic.groups.remove(model.placement_key(HOME, "c2"))
        model.placement(logic.groups, HOME, "c3").register("power_desired").set("off")
        await _settle(logic, wn)
        assert await reconciling == 1  # c1's report
        assert set(runtime.instances) == {"c1"} and {"c2", "c3"} <= worker._dirty
        await _settle(logic, wn)
        assert [(c.id, c.power_actual) for c in placed(wn)] == [("c1", "on"), ("c3", "off")]
        assert await worker.reconcile_changes(now) == 0
        worker.close()
    asyncio.run(run())


def test_a_reconcile_cancelled_while_its_start_runs_still_records_and_reports_it(
        tmp_path: Path) -> None:
    """The start is made on the runtime's thread whatever happens to the reconcile: a
    reconcile cancelled meanwhile (the worker stopping) used to drop what it started, so
    its restart_generation was never written and the next worker restarted it again."""
    async def run() -> None:
        logic, wn, _, worker, now = await _platform(tmp_path)
        worker.runtime = runtime = SlowRuntime(start_s=0.5)
        _placed_on_n1(logic, worker, "c").register("restart_generation").set(2)
        await _settle(logic, wn)
        reconciling = asyncio.create_task(worker.reconcile(now))
        await asyncio.sleep(0.1)  # starting
        reconciling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reconciling
        assert worker._running == {"c": runtime.instances["c"]}
        await _settle(logic, wn)
        c = placed(wn)[0]
        assert (c.power_actual, c.pid, c.started_generation) == ("on", runtime.instances["c"], 2)
        worker.close()
    asyncio.run(run())


def test_a_restart_its_worker_made_but_never_reported_is_not_made_again(
        tmp_path: Path) -> None:
    """A worker killed after it restarted a container and before it reported the restart
    (``started_generation``) left the new instance running, and the next worker restarted
    it a second time: a Restart carried out twice. The instance says the generation it was
    started for (the runtime's ``generation``): the next worker reports it, starts
    nothing, and carries out the next Restart."""
    async def run() -> None:
        logic, wn, runtime, worker, now = await _platform(tmp_path)
        rec = _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        await worker.reconcile(now)
        rec.register("restart_generation").set(1)
        await _settle(logic, wn)
        pid = runtime.start("c", 1)  # the restart a worker made as it was killed
        starts = runtime.starts
        await worker.reconcile(now)  # as a worker that starts again does
        await _settle(logic, wn)
        assert (runtime.starts, runtime.instances["c"]) == (starts, pid)
        c = placed(wn)[0]
        assert (c.power_actual, c.pid, c.started_generation) == ("on", pid, 1)
        rec.register("restart_generation").set(2)
        await _settle(logic, wn)
        await worker.reconcile_changes(now)
        await _settle(logic, wn)
        assert runtime.starts == starts + 1 and runtime.generation("c") == 2
        assert placed(wn)[0].started_generation == 2
        worker.close()
    asyncio.run(run())


def test_a_suspend_longer_than_the_lease_ends_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.monotonic()`` does not count the time a machine is suspended: a worker that
    thawed after a suspend longer than its lease ran its containers on for what the lease
    had left, while logic had moved them (a review). The lease's clock, ``lease.clock()``
    (``CLOCK_BOOTTIME``), counts it: here it jumps as a suspend makes it jump."""
    assert lease.BOOTTIME == time.CLOCK_BOOTTIME  # (Linux)

    async def run() -> None:
        logic, wn, runtime, worker, now = await _platform(tmp_path)
        _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        await worker.reconcile(now)
        assert "c" in runtime.instances
        old, woke = worker.lease.epoch, lease.clock() + 2 * worker.lease.duration_s
        monkeypatch.setattr(lease, "clock", lambda: woke + time.monotonic() - now)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(250):
                await _settle(logic, wn)
                if not runtime.instances and worker.lease.epoch != old:
                    break
                await asyncio.sleep(0.02)
            assert runtime.instances == {} and worker.lease.epoch != old
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            worker.close()
    asyncio.run(run())


class GatedRuntime(CountingRuntime):
    """The starts of the containers in ``slow`` block until ``gate`` is set (an image's
    pull); ``began`` is set as the first of them begins."""

    def __init__(self, slow: set[str]) -> None:
        super().__init__()
        self.slow = slow
        self.gate, self.began = threading.Event(), threading.Event()

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        if cid in self.slow:
            self.began.set()
            assert self.gate.wait(20), "the test never opened the gate"
        return super().start(cid, generation, may_start)


class Running(NamedTuple):
    """:func:`_worker_running`'s: logic's and the worker's nodes, the worker, its run()."""

    logic: NodeGroups[MemoryNode]
    wn: NodeGroups[MemoryNode]
    worker: Worker
    task: asyncio.Task[None]

    async def until(self, what: str, check: Callable[[], bool], within_s: float = 5) -> None:
        """Settle the nodes until ``check()`` holds; AssertionError after ``within_s``."""
        for _ in range(int(within_s / 0.02)):
            await _settle(self.logic, self.wn)
            if check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"not within {within_s:g} s: {what} (records "
                             f"{self.actual()}, running {self.worker.runtime.running()})")

    def actual(self) -> dict[str, str | None]:
        """Container id -> ``power_actual``, as the worker's replica has them."""
        return {c.id: c.power_actual for c in placed(self.wn)}


@contextlib.asynccontextmanager
async def _worker_running(tmp: Path, runtime: GatedRuntime) -> AsyncIterator[Running]:
    """logic and node n1's worker on a memory bus, the worker's run() going (full
    reconciles every 0.1 s) and its lease held; afterwards the gate is opened and the
    worker stopped."""
    bus = MemoryBus()
    logic, wn = (cell_only(MemoryNode(bus, rid, policy=model.POLICY))
                 for rid in ("logic", "worker.n1"))
    for n in (logic, wn):
        await n.start()
    worker = Worker(wn, "n1", runtime, state_dir=tmp, use_guard=False, reconcile_s=0.1)
    on = Running(logic, wn, worker, asyncio.create_task(worker.run()))
    try:
        await on.until("the lease holds", lambda: worker.lease.may_run(lease.clock()))
        yield on
        assert not on.task.done(), on.task
    finally:
        runtime.gate.set()
        on.task.cancel()
        await asyncio.gather(on.task, return_exceptions=True)


class StubbornRuntime(GatedRuntime):
    """The stops of the containers in ``stubborn`` block until ``gate`` is set (containers
    that ignore SIGTERM, waited for until their grace is over); ``began`` is set as the
    first of them begins."""

    def __init__(self) -> None:
        super().__init__(slow=set())
        self.stubborn: set[str] = set()
        self.stopping = 0

    def stop(self, cid: str, grace_s: float = 5.0) -> None:
        if cid in self.stubborn and cid in self.instances:
            with self.lock:
                self.stopping += 1
            self.began.set()
            assert self.gate.wait(20), "the test never opened the gate"
        super().stop(cid, grace_s)


def test_stops_that_wait_out_their_grace_hold_up_no_start(tmp_path: Path) -> None:
    """Stops ran on the node's 4 runtime threads: 4 containers that ignore SIGTERM, stopped
    at once, held up every start of the node for their grace (half the lease's: 15 s
    under the default lease). Stops now run on threads of their own."""
    async def run() -> None:
        runtime = StubbornRuntime()
        async with _worker_running(tmp_path, runtime) as on:
            logic, worker = on.logic, on.worker
            recs = {f"s{i}": _placed_on_n1(logic, worker, f"s{i}") for i in range(6)}
            await on.until("all on", lambda: sorted(
                c for c, p in on.actual().items() if p == "on") == sorted(recs))
            runtime.stubborn = set(recs)
            for rec in recs.values():
                rec.register("power_desired").set("off")
            await _settle(logic, on.wn)
            await on.until("the 6 stops begun", lambda: runtime.stopping == 6)
            _placed_on_n1(logic, worker, "new")
            await on.until("new on while the stops wait",
                           lambda: on.actual().get("new") == "on")
            assert runtime.stopping == 6 and not runtime.gate.is_set()
            runtime.gate.set()
            await on.until("the 6 off", lambda: all(
                on.actual().get(c) == "off" for c in recs))
    asyncio.run(run())


def test_a_slow_start_holds_up_no_other_container_s_start_or_stop(tmp_path: Path) -> None:
    """One runtime call at a time used to make every start and stop of a node wait for a
    slow one (a 60 s image pull held up a user's Stop). Now, while "slow" starts, "quick"
    is started and "old" stopped, each reported; the full reconciles meanwhile neither
    start "slow" a second time nor stop it; once its start returns, it is reported on."""
    async def run() -> None:
        runtime = GatedRuntime(slow={"slow"})
        async with _worker_running(tmp_path, runtime) as on:
            logic, worker = on.logic, on.worker
            _placed_on_n1(logic, worker, "old")
            await on.until("old on", lambda: on.actual().get("old") == "on")
            _placed_on_n1(logic, worker, "slow")
            await _settle(logic, on.wn)
            assert await asyncio.to_thread(runtime.began.wait, 5)
            _placed_on_n1(logic, worker, "quick")
            model.placement(logic.groups, HOME, "old").register("power_desired").set("off")
            await on.until("quick on and old off while slow starts",
                           lambda: on.actual() == {"old": "off", "slow": "off", "quick": "on"})
            assert set(runtime.instances) == {"quick"}
            await asyncio.sleep(0.35)  # full reconciles every 0.1 s, "slow" still starting
            assert runtime.starts == 2 and runtime.stops == 1
            runtime.gate.set()
            await on.until("slow on", lambda: on.actual()["slow"] == "on")
            assert set(runtime.instances) == {"quick", "slow"}
            await asyncio.sleep(0.25)  # full reconciles find nothing to do
            assert (runtime.starts, runtime.stops) == (3, 1)
    asyncio.run(run())


def test_the_lease_s_end_waits_for_the_calls_in_flight_then_stops_everything(
        tmp_path: Path) -> None:
    """The end of the epoch waits for the calls in flight, and begins none meanwhile; a
    start in flight as the lease runs out (its first check came before) is not made: it is
    asked again once its slow part is done (an image's pull, a ``docker create``), right
    before the instance would run. The rest is stopped."""

    async def run() -> None:
        logic, wn, _, worker, now = await _platform(tmp_path)
        worker.runtime = runtime = GatedRuntime(slow={"slow"})
        for cid in ("a", "slow"):
            _placed_on_n1(logic, worker, cid)
        await _settle(logic, wn)
        starting = asyncio.create_task(worker.reconcile_changes(now))
        assert await asyncio.to_thread(runtime.began.wait, 5)
        old = worker.lease.epoch
        worker.lease = lease.Lease(old, 12.0, deadline=lease.clock() - 1)  # ran out
        ending = asyncio.create_task(worker.end_lapsed_epoch(lease.clock()))
        await asyncio.sleep(0.3)
        assert not ending.done() and set(runtime.instances) == {"a"}
        assert worker._begin_calls(["a"], lease.clock()) == []  # held back
        runtime.gate.set()
        await ending
        assert await starting == 1  # "a" was started and reported; "slow" was not made
        assert runtime.starts == 1
        assert runtime.instances == {} and worker.lease.epoch != old
        worker.close()
    asyncio.run(run())


class StaleListingRuntime(CountingRuntime):
    """Its listing says what ran as it began, and returns ``list_s`` later (a ``docker ps``
    on a busy engine): out of date for whatever started or stopped meanwhile."""

    def __init__(self, list_s: float) -> None:
        super().__init__()
        self.list_s = list_s

    def running(self) -> dict[str, int]:
        then = super().running()
        time.sleep(self.list_s)
        return then


def test_a_full_reconcile_does_not_start_again_what_started_while_it_listed(
        tmp_path: Path) -> None:
    """A container started by its own call while the full reconcile's listing ran is not
    in that listing: the full reconcile must not take it for one that should run and
    does not, and start it again (a restart nobody asked for), nor even look it up
    again: its own call has just recorded it."""
    async def run() -> None:
        logic, wn, _, worker, now = await _platform(tmp_path)
        worker.runtime = runtime = StaleListingRuntime(list_s=1.0)
        full = asyncio.create_task(worker.reconcile(now))
        await asyncio.sleep(0.1)  # listing: nothing runs
        _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        assert await worker.reconcile_changes(now) == 1 and runtime.starts == 1
        looked = runtime.lookups
        assert await full == 0
        assert runtime.lookups == looked  # left alone: its call just recorded it
        assert runtime.starts == 1 and runtime.stops == 0
        await _settle(logic, wn)
        assert [(c.power_actual, c.pid) for c in placed(wn)] == [("on", runtime.instances["c"])]
        assert worker._running == runtime.instances
        assert await worker.reconcile(lease.clock()) == 0  # and the next one agrees
        worker.close()
    asyncio.run(run())


def test_a_slow_restart_begun_by_a_full_reconcile_holds_up_no_later_full_reconcile(
        tmp_path: Path) -> None:
    """A full reconcile used to wait for the calls it began: while one of them restarted a
    container slowly, no other died container was found, no retry was tried, and the
    lease's end was left to the guard."""
    async def run() -> None:
        runtime = GatedRuntime(slow=set())
        async with _worker_running(tmp_path, runtime) as on:
            for cid in ("slow", "x"):
                _placed_on_n1(on.logic, on.worker, cid)
            await on.until("both run", lambda: set(runtime.instances) == {"slow", "x"})
            runtime.slow = {"slow"}
            runtime.stop("slow")  # it died: a full reconcile begins its slow restart
            assert await asyncio.to_thread(runtime.began.wait, 5)
            runtime.stop("x")  # and this one died too
            await on.until("x started again while slow restarts",
                           lambda: "x" in runtime.instances, within_s=2)
            assert "slow" not in runtime.instances
            runtime.gate.set()
            await on.until("slow started again", lambda: "slow" in runtime.instances)
            assert set(runtime.instances) == {"slow", "x"}
    asyncio.run(run())


def test_a_reconcile_cancelled_on_the_turn_it_began_still_records_its_call(
        tmp_path: Path) -> None:
    """Its call was begun at once; cancelled before its recording task ever ran, the
    container stayed busy for good (no call for it again, and the lease's end waited for
    its record for ever)."""
    async def run() -> None:
        logic, wn, runtime, worker, now = await _platform(tmp_path)
        _placed_on_n1(logic, worker, "c")
        await _settle(logic, wn)
        reconciling = asyncio.create_task(worker.reconcile(now, only=["c"]))
        await asyncio.sleep(0)  # it began the call
        reconciling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reconciling
        assert set(runtime.instances) == {"c"} and worker._running == runtime.instances
        assert not worker._busy and not worker._unrecorded
        await _settle(logic, wn)
        assert placed(wn)[0].power_actual == "on"
        worker.close()
    asyncio.run(run())


def test_a_beat_mends_a_lease_written_as_another_type(tmp_path: Path) -> None:
    """4000.0 == 4000 in Python: a lease_ms a worker of another version wrote as a float
    was never written again, and logic could not read it (services/model.py reads a
    field of the wrong type as absent)."""
    async def run() -> None:
        _logic, wn, _runtime, worker, _now = await _platform(tmp_path)
        rec = model.node(wn.groups, model.DEFAULT_CELL, "n1")
        worker.beat()
        rec.register("lease_ms").set(float(rec.register("lease_ms").value))
        worker.beat()
        value = rec.register("lease_ms").value
        assert type(value) is int and value == int(worker.lease.duration_s * 1000)
    asyncio.run(run())
