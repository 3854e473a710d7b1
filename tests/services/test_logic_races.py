"""Logic's decisions racing the users' changes (services/logic.py), in memory: web, logic
and a node's worker on buses whose every hop takes a few milliseconds, so that a change
can arrive while logic decides. What runs is read from the worker's runtime.

Found by a review (2026-12-07): a container deleted while logic placed it ran on for good,
invisible and unstoppable through the API; a Stop that arrived while logic made the
container's new home durable was overwritten, and the container started; a worker whose
beats were all confirmed late held the Starts placed on its node for good."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from crdt_ops.events import ChangeEvent
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model
from services.logic import Logic
from services.worker import Worker
from tests.services.test_worker import CountingRuntime
from tests.support import cell_only, with_cell

HOP_S = 0.02  # one hop between two services


@dataclass
class Platform:
    web: NodeGroups[MemoryNode]
    logic: Logic
    worker: Worker
    runtime: CountingRuntime


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return cond()


@asynccontextmanager
async def platform(tmp: Path, hop_s: float = HOP_S) -> AsyncIterator[Platform]:
    """Web, logic and node n1's worker (its lease held), all running, each hop ``hop_s``."""
    top, cell = MemoryBus(hop_s), MemoryBus(hop_s)
    web = with_cell(MemoryNode(top, "web", policy=model.POLICY), cell)
    logic = Logic(with_cell(MemoryNode(top, "logic", policy=model.POLICY), cell))
    runtime = CountingRuntime()
    worker = Worker(cell_only(MemoryNode(cell, "worker.n1", policy=model.POLICY)), "n1",
                    runtime, state_dir=tmp, use_guard=False, lease_s=4.0)
    for n in (web, logic.node, worker.node):
        await n.start()
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(logic.run())]
    try:
        assert await _until(lambda: "n1" in logic.live_nodes()[1]), "n1 never fresh"
        yield Platform(web, logic, worker, runtime)
    finally:
        ended = [t for t in tasks if t.done()]  # a service's loop must not end on its own
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not ended, [t.exception() for t in ended]


async def _create_and_start(web: NodeGroups[MemoryNode], cid: str) -> None:
    async with web.write() as g:
        rec = model.container(g, cid)
        rec.register("name").set(cid)
        rec.register("owner").set("ada")
        rec.register("power_desired").set("on")


def test_a_container_deleted_while_logic_places_it_runs_nowhere(tmp_path: Path) -> None:
    """The delete reaches logic after it named the container's home and before web heard
    that: observed-remove keeps logic's concurrent ``cell`` and ``node``, and the record
    became ``{cell, node}``. Logic took that for a home named, placed the container, and
    the worker ran it for good, with web answering 404 for it."""
    async def run() -> None:
        async with platform(tmp_path) as p:
            await _create_and_start(p.web, "c1")
            await asyncio.sleep(HOP_S * 1.25)  # logic decided; its write is in flight
            async with p.web.write() as g:  # the user's Delete
                g.remove(model.CONTAINERS + "c1")
            await asyncio.sleep(1.5)  # logic's passes and the worker's reconciles
            assert "c1" not in p.runtime.running()
            for g in (p.web, p.logic.node):  # nothing left of it (an empty map at most)
                assert not g.groups.get(model.CONTAINERS + "c1")
                assert not g.groups.keys(model.placements(model.DEFAULT_CELL))
    asyncio.run(run())


def test_a_stop_that_arrives_while_logic_makes_the_home_durable_is_not_overwritten(
        tmp_path: Path) -> None:
    """Logic named a home, and awaited its store (over RabbitMQ a disk commit and a
    publish; here 50 ms) while the user's Stop arrived: it then wrote the placement from
    the record as it was before, ``power_desired`` on, and the worker started a container
    the user had stopped."""
    async def run() -> None:
        async with platform(tmp_path, hop_s=0.005) as p:
            node, flush = p.logic.node, p.logic.node.flush

            async def slow_flush() -> None:
                await asyncio.sleep(0.05)
                await flush()
            node.flush = slow_flush  # type: ignore[method-assign]
            told: list[object] = []  # what the worker is told to do, as it hears it

            def placement(event: ChangeEvent) -> None:
                if isinstance(event.new, dict) and "power_desired" in event.new:
                    told.append(event.new["power_desired"])
            p.worker.node.groups.subscribe(model.placements(model.DEFAULT_CELL), placement)
            await _create_and_start(p.web, "c1")
            await asyncio.sleep(0.02)  # logic named the home, awaits its flush
            async with p.web.write() as g:  # the user's Stop
                model.container(g, "c1").register("power_desired").set("off")
            await asyncio.sleep(1.0)
            assert "on" not in told, f"the worker was told to start it: {told}"
            assert p.runtime.starts == 0, "a container the user stopped was started"
            started = model.container(p.web.groups, "c1").register("power_desired").value
            assert started == "off"
    asyncio.run(run())


def test_a_start_placed_and_run_while_nothing_races_it(tmp_path: Path) -> None:
    """The rig itself: without a race, a Start is placed on n1 and runs there."""
    async def run() -> None:
        async with platform(tmp_path) as p:
            await _create_and_start(p.web, "c1")
            assert await _until(lambda: "c1" in p.runtime.running())
            home = model.record_home(p.web.groups.get(model.CONTAINERS + "c1"))
            assert home == (model.DEFAULT_CELL, "n1")
    asyncio.run(run())


def test_a_worker_whose_beats_are_all_confirmed_late_starts_a_new_epoch(
        tmp_path: Path) -> None:
    """Every beat confirmed 2 s after it was written (a quarter of the lease is 1 s): the
    epoch was never held, and never lapsed either (a lease never held had no end), so
    logic, which received the beats, kept placing containers on a node that never started
    them. The epoch is over after one lease; the next one is announced."""
    async def run() -> None:
        node = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
        worker = Worker(node, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                        lease_s=4.0)
        beats = node.node_of(model.node_key(model.DEFAULT_CELL, "n1"))
        beats.confirmed_through = lambda: time.monotonic() - 2.0  # type: ignore[method-assign]
        await node.start()
        first = worker.lease.epoch
        task = asyncio.create_task(worker.run())
        try:
            assert await _until(lambda: worker.lease.epoch != first, 8.0)
            assert not worker.lease.deadline  # (this one is not held either)
            key = model.node_key(model.DEFAULT_CELL, "n1")  # announced to logic:
            assert await _until(lambda: node.groups.get(key)["epoch"] == worker.lease.epoch)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(run())


def test_a_delete_racing_another_web_s_stop_leaves_logic_running(tmp_path: Path) -> None:
    """Two webs: one deletes a container while the other stops it. The record became
    ``{power_desired: off}`` (the Stop kept by observed-remove), with no name; logic,
    cleaning up what the delete left, removed web's field too, which its write policy
    forbids: Logic.run raised, and the logic service exited."""
    async def run() -> None:
        async with platform(tmp_path) as p:
            top, cell = (p.web.nodes[g].bus for g in p.web.nodes)
            other = with_cell(MemoryNode(top, "web.2", policy=model.POLICY), cell)
            await other.start()
            await _create_and_start(p.web, "c1")
            assert await _until(lambda: "c1" in p.runtime.running())
            async with p.web.write() as g:  # the Delete, and concurrently the Stop
                g.remove(model.CONTAINERS + "c1")
            async with other.write() as g:
                model.container(g, "c1").register("power_desired").set("off")
            await asyncio.sleep(1.0)
            assert "c1" not in p.runtime.running()
            assert p.logic.node.groups.get(model.CONTAINERS + "c1") == {"power_desired": "off"}
            # (logic runs on: the platform's exit checks its task did not end)
    asyncio.run(run())


def test_a_worker_that_took_over_from_another_process_waits_a_lease_to_beat(
        tmp_path: Path) -> None:
    """A standby worker of node n1 on another machine took over the moment the first one's
    connection closed (killed), and announced a new epoch at once: logic, taking a new
    epoch for the end of the old one, placed the containers there, while the first one's
    guard ran them until its lease ended. A new epoch of a standby that took over begins
    a lease later (``hold_off_s``; the services pass one lease and a second)."""
    async def run() -> None:
        node = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
        worker = Worker(node, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                        lease_s=4.0, hold_off_s=1.0)
        await node.start()
        key = model.node_key(model.DEFAULT_CELL, "n1")
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.6)
            assert node.groups.get(key) is None  # no beat, no epoch announced yet
            assert await _until(lambda: (node.groups.get(key) or {}).get("epoch")
                                == worker.lease.epoch, 3.0)
            assert await _until(lambda: worker.lease.may_run(time.monotonic()), 3.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(run())


def test_a_new_worker_of_a_node_another_process_ran_waits_out_that_one_s_lease(
        tmp_path: Path) -> None:
    """A worker killed (its holder queue freed at once), then one started for its node
    elsewhere, with a runtime directory of its own, never waited as a standby: it
    announced a new epoch at once, and logic, taking that for the end of the old one,
    placed the containers anew while the first one's guard ran them until its lease
    ended; a standby with a shorter --lease-s waited only its own (a review). A new epoch
    now waits out the lease of the epoch the node's record names, when this runtime
    directory never had it."""
    async def run() -> None:
        key = model.node_key(model.DEFAULT_CELL, "n1")
        node = cell_only(MemoryNode(MemoryBus(), "worker.n1", policy=model.POLICY))
        await node.start()
        rec = node.groups.map(key)  # what the killed one announced (as its replica has it)
        for field, value in (("epoch", "theirs"), ("lease_ms", 2000), ("capacity", 1),
                             ("heartbeat", 1)):
            rec.register(field).set(value)
        await node.flush()
        worker = Worker(node, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                        lease_s=1.2)
        assert worker._predecessor_s() == 3.0
        t0 = time.monotonic()
        task = asyncio.create_task(worker.run())
        try:
            assert await _until(lambda: (node.groups.get(key) or {}).get("epoch")
                                == worker.lease.epoch, 6.0)
            assert time.monotonic() - t0 >= 3.0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        again = Worker(node, "n1", CountingRuntime(), state_dir=tmp_path, use_guard=False,
                       lease_s=1.2)  # the same directory: the epoch the record names is its
        assert again._predecessor_s() == 0.0
    asyncio.run(run())
