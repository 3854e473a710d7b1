"""What wakes logic's decision pass (services/logic.py): a change a decision may depend on
(web's, a node's), or a placement its own move left over; not its own decisions, and not a
worker's reports (``model.REPORTS``), which no decision reads."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from crdt_ops.events import ChangeEvent
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model
from services.index import ContainerIndex
from services.logic import NO_CAPACITY, Logic, decisions
from tests.support import cell_only, with_cell

RECORD = {"name": "a", "owner": "ada", "power_desired": "on"}
PLACED = {**RECORD, "cell": model.DEFAULT_CELL, "node": "n1", "assigned_node": "n1",
          "assigned_epoch": "e1", "placed": {"power_desired": "on"}}
NODE = {"capacity": 4, "epoch": "e1", "lease_ms": 8000, "heartbeat": 1, "running": 0}


def _logic() -> Logic:
    return Logic(with_cell(MemoryNode(MemoryBus(), "logic", policy=model.POLICY),
                           MemoryBus()))


def _wakes(logic: Logic, changed: object, event: ChangeEvent) -> bool:
    logic._wake.clear()
    changed(event)  # type: ignore[operator]
    return logic._wake.is_set()


def test_a_decision_pass_is_woken_by_what_decisions_read_only() -> None:
    logic = _logic()
    key, node_key = model.CONTAINERS + "c1", model.node_key(model.DEFAULT_CELL, "n1")
    on = {**PLACED, "workers": {"n1": {"power_actual": "on", "pid": 7}}}
    # web's changes: a create, a Stop
    assert _wakes(logic, logic._changed, ChangeEvent(key, None, RECORD, "web"))
    assert _wakes(logic, logic._changed,
                  ChangeEvent(key, PLACED, {**PLACED, "power_desired": "off"}, "web"))
    # logic's own decision (the home named, the placement written): its pass made it
    assert not _wakes(logic, logic._changed, ChangeEvent(key, RECORD, PLACED, "logic"))
    # the worker's report of the start: nothing logic decides from
    assert not _wakes(logic, logic._changed, ChangeEvent(key, PLACED, on, "worker.n1"))
    # logic's own move to another node: the old placement may be an orphan, to remove
    moved = {**PLACED, "node": "n2", "assigned_node": "n2"}
    assert _wakes(logic, logic._changed, ChangeEvent(key, PLACED, moved, "logic"))
    assert model.placement_key((model.DEFAULT_CELL, "n1"), "c1") in logic.orphans
    # a node's beat may make it fresh; its count of what runs decides nothing
    assert _wakes(logic, logic._cell_changed, ChangeEvent(node_key, None, NODE, "worker.n1"))
    assert not _wakes(logic, logic._cell_changed,
                      ChangeEvent(node_key, NODE, {**NODE, "running": 1}, "worker.n1"))
    assert _wakes(logic, logic._cell_changed,
                  ChangeEvent(node_key, NODE, {**NODE, "heartbeat": 2}, "worker.n1"))
    # ... but a container stopped there makes room for a Start waiting for it
    busy = {**NODE, "heartbeat": 2, "running": 1}
    logic._cell_changed(ChangeEvent(node_key, NODE, busy, "worker.n1"))
    logic.index.put(model.CONTAINERS + "c2", {**RECORD, "rejected_reason": "no room"})
    assert _wakes(logic, logic._cell_changed,
                  ChangeEvent(node_key, busy, {**busy, "running": 0}, "worker.n1"))
    assert logic.nodes["n1"].heartbeat == 2


def test_reports_are_what_a_worker_writes() -> None:
    """Each field a worker writes is a report (else logic would wake for them): its slot
    of a placement, and its node record's ``running``."""
    assert model.beyond_reports(PLACED, {**PLACED, "power_desired": "off"})
    assert not model.beyond_reports(PLACED, {**PLACED, "workers": {"n1": {"pid": 1}}})
    assert not model.beyond_reports(NODE, {**NODE, "running": 3})
    assert model.beyond_reports(None, NODE) and model.beyond_reports(NODE, None)
    assert not model.beyond_reports(None, None)


def test_logic_rides_out_a_store_failure() -> None:
    """A store failing for a moment (its node's ``flush()`` raising StoreUnavailable) used
    to end ``Logic.run`` for good, the process up: nothing was decided again."""
    from tests.services.test_worker import _failing_once

    async def run() -> None:
        platform = MemoryBus()
        logic = Logic(with_cell(MemoryNode(platform, "logic", policy=model.POLICY),
                                MemoryBus()))
        web = with_cell(MemoryNode(platform, "web", policy=model.POLICY), MemoryBus())
        for n in (logic.node, web):
            await n.start()
        flushes = _failing_once(logic.node)
        task = asyncio.create_task(logic.run())

        async def decided(cid: str) -> object:
            rec = web.groups.map(model.CONTAINERS + cid)
            for field, value in RECORD.items():
                rec.register(field).set(value)
            await web.flush()
            for _ in range(100):  # no node: logic says why it does not place it
                await asyncio.sleep(0.02)
                if rec.register("rejected_reason").value or task.done():
                    break
            return rec.register("rejected_reason").value

        await decided("c1")  # its decision's flush fails
        assert flushes[0] == 1
        assert await decided("c2") == "no worker node with free capacity", (
            f"Logic.run ended: {task.exception()!r}" if task.done() else "not decided")
        task.cancel()
    asyncio.run(run())


def test_a_field_of_the_wrong_type_reads_as_absent() -> None:
    """A record holds what its writers' rules let them write: a node's capacity written
    as a string (by a worker of another version, or a faulty one) ended logic's every
    decision pass, and every restart's, so that nothing was placed anywhere."""
    bad = {"capacity": "10", "epoch": 7, "lease_ms": "30000", "heartbeat": True,
           "running": -1}
    node = model.Node.of(model.node_key(model.DEFAULT_CELL, "n2"), bad)
    assert (node.capacity, node.epoch, node.lease_ms, node.heartbeat, node.running) == \
        (0, None, 0, 0, 0)
    c = model.Container.of("containers/c1", {
        "name": 3, "owner": ["ada"], "power_desired": 1, "restart_generation": "2",
        "cell": {}, "node": 5, "assigned_node": "n1", "placed": {"restart_generation": 1.5},
        "workers": {"n1": {"pid": "12", "power_actual": 1, "started_generation": None}}})
    assert (c.name, c.owner, c.power_desired, c.restart_generation, c.cell, c.node,
            c.placed_generation, c.pid, c.power_actual, c.started_generation) == \
        (None, None, "off", 0, None, None, 0, None, "off", 0)


def test_logic_places_beside_a_node_whose_record_is_of_the_wrong_types() -> None:
    async def run() -> None:
        platform, cell = MemoryBus(), MemoryBus()
        logic = Logic(with_cell(MemoryNode(platform, "logic", policy=model.POLICY), cell))
        web = with_cell(MemoryNode(platform, "web", policy=model.POLICY), cell)
        good, bad = (cell_only(MemoryNode(cell, f"worker.{n}", policy=model.POLICY))
                     for n in ("n1", "n2"))
        for n in (logic.node, web, good, bad):
            await n.start()
        for worker, name, fields in ((bad, "n2", {"capacity": "10", "lease_ms": "30000"}),
                                     (good, "n1", {})):
            rec = model.node(worker.groups, model.DEFAULT_CELL, name)
            for field, value in {**NODE, "heartbeat": int(time.time() * 1000),
                                 "epoch": f"e-{name}", "lease_ms": 30000, **fields}.items():
                rec.register(field).set(value)
            await worker.flush()
        task = asyncio.create_task(logic.run())
        rec = model.container(web.groups, "c1")
        for field, value in RECORD.items():
            rec.register(field).set(value)
        await web.flush()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if rec.register("node").value or task.done():
                break
        assert not task.done(), f"Logic.run ended: {task.exception()!r}"
        assert rec.register("node").value == "n1"
        task.cancel()
    asyncio.run(run())


def test_a_node_whose_lease_cannot_be_read_keeps_what_runs_there() -> None:
    """A node whose ``lease_ms`` reads as absent (a worker of another version wrote
    "4000") was left out of the live nodes: every container on it counted as placed
    nowhere and moved at once, while its worker held its lease and ran them. It stays live
    now (what runs there stays), and is not fresh (nothing new goes there). (4000.0 reads
    as 4000.)"""
    assert model.Node.of(model.node_key(model.DEFAULT_CELL, "n3"),
                         {**NODE, "lease_ms": 4000.0}).lease_ms == 4000
    logic = _logic()
    for name, lease_ms in (("n1", "4000"), ("n2", 4000)):
        key = model.node_key(model.DEFAULT_CELL, name)
        logic._cell_changed(ChangeEvent(key, None, {**NODE, "epoch": f"e-{name}",
                                                    "lease_ms": lease_ms}, f"worker.{name}"))
    logic.liveness.heard("n2", "e-n2", time.monotonic())
    live, fresh = logic.live_nodes()
    assert set(live) == {"n1", "n2"} and "n1" not in fresh


def test_a_container_still_stopping_holds_its_place_on_its_node() -> None:
    """A Stop takes a container out of what should run at once, but its process runs on
    until its worker stopped it (SIGTERM, then SIGKILL after the grace). A Start placed on
    its node meanwhile overran the node's capacity: logic now counts what the node's worker
    last counted running when that is more."""
    idx = ContainerIndex()
    idx.put(model.CONTAINERS + "c1", {**PLACED, "power_desired": "off"})  # stopped: stopping
    idx.put(model.CONTAINERS + "c2", {**RECORD, "name": "b"})  # to start
    stopping = model.Node("n1", capacity=1, heartbeat=1, running=1, epoch="e1", lease_ms=8000)

    def placed(n: model.Node) -> list[tuple[str, str | None, str | None]]:
        return [(d.container.id, d.node.name if d.node else None, d.reason)
                for d in decisions(idx, {"n1": n}, {"n1"}, quota=20)
                if d.container.id == "c2"]

    assert placed(stopping) == [("c2", None, NO_CAPACITY)]
    # its worker stopped it, and counts none running: the Start goes there
    assert placed(dataclasses.replace(stopping, running=0)) == [("c2", "n1", None)]
    # what should run there counts too, when the worker has not started it yet
    idx.put(model.CONTAINERS + "c1", PLACED)
    assert placed(dataclasses.replace(stopping, running=0)) == [("c2", None, NO_CAPACITY)]
