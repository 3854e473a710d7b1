"""Several groups in one process over one connection (:mod:`crdt_ops.transport.amqp.groups`),
against the real broker: writes go to their key's group, a process holding one group
receives and stores that group only, and a restart restores every group from its store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from crdt_ops import ChangeEvent
from crdt_ops.routing import NotHeld, Routing
from crdt_ops.transport.amqp.groups import AmqpGroups, store_for
from crdt_ops.transport.config import Settings
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from crdt_ops.transport.topology import Topology
from tests.broker import (
    cut_off_and_take_over,
    delete_group,
    new_group,
    rabbitmqctl,
    until,
)
from tools.harness import Proxy, delete_group_async


class Platform:
    """A routing rule whose groups no other run uses: ``<base>.platform`` by default,
    ``<base>.cell.<c>`` for keys under ``cells/<c>/``."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir, self.base = url, workdir, new_group()
        self.routing = Routing(f"{self.base}.platform", {"cells/{}/": f"{self.base}.cell.{{}}"})

    def group(self, name: str) -> str:
        return f"{self.base}.{name}"

    def process(self, rid: str, *groups: str, sole: str | None = None) -> AmqpGroups:
        s = Settings(amqp_url=self.url, group=self.group("platform"), replica_id=rid,
                     heartbeat_s=0.5, store=str(self.workdir / f"{rid}.sqlite"))
        return AmqpGroups(s, self.routing, [self.group(g) for g in groups], sole=sole)

    def logic(self, url: str, groups: tuple[str, ...] = ("platform", "cell.a"),
              store: str = "logic.a.sqlite", consume: str = "stream") -> AmqpGroups:
        """Logic ``logic.a`` of ``groups``, reaching the broker at ``url`` (a proxy's)."""
        s = Settings(amqp_url=url, group=self.group("platform"), replica_id="logic.a",
                     heartbeat_s=0.5, store=str(self.workdir / store), consume=consume)
        return AmqpGroups(s, self.routing, [self.group(g) for g in groups], sole="logic")


async def place_c1(logic: AmqpGroups, observer: AmqpGroups) -> None:
    """``logic`` places container c1, and ``observer`` has it."""
    async with logic.write() as g:
        g.map("containers/c1").register("node").set("n1")
    await until(lambda: observer.groups.get("containers/c1") is not None, 20, "c1")


@pytest.fixture
def platform(amqp_url: str, tmp_path: Path) -> Iterator[Platform]:
    p = Platform(amqp_url, tmp_path)
    yield p
    for g in ("platform", "cell.a", "cell.b"):
        delete_group(amqp_url, p.group(g), ["front", "worker-a", "worker-b", "logic.a",
                                            "logic.b", "worker.w1.a", "worker.w1.b"])


@pytest.mark.asyncio
async def test_of_two_processes_of_a_sole_principal_the_second_waits_until_the_first_stops(
        platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    """Two logics, whatever their replica ids and stores, would each place a container
    on a node of their own choice: one at a time runs (``sole``), the other waits as a
    standby in start(), reading and writing nothing, and takes over once it stops. Each
    holds two groups, started concurrently over one connection: the one name they hold
    in common leaves no way for each to hold half."""
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.holder")
    front = platform.process("front", "platform", "cell.a")  # a member to admit them
    first = platform.process("logic.a", "platform", "cell.a", sole="logic")
    second = platform.process("logic.b", "platform", "cell.a", sole="logic")
    await front.start()
    await first.start()
    starting = asyncio.ensure_future(second.start())
    try:
        async with first.write() as g:
            g.map("cells/a/containers/c1").register("assigned_node").set("n1")
        await asyncio.sleep(2.0)
        assert not starting.done()  # a standby: not joined, nothing read or written
        assert second.groups.get("cells/a/containers/c1") is None
        assert any("waits as a standby" in r.getMessage() for r in caplog.records)
        await first.stop()
        await asyncio.wait_for(starting, 20)  # the first is gone: the second takes over
        await until(lambda: second.groups.get("cells/a/containers/c1") is not None, 10,
                    "the second to read what the first wrote")
    finally:
        starting.cancel()
        await asyncio.gather(first.stop(), second.stop(), front.stop(),
                             return_exceptions=True)


@pytest.mark.asyncio
async def test_each_process_receives_and_stores_only_the_groups_it_holds(
        platform: Platform) -> None:
    front = platform.process("front", "platform", "cell.a", "cell.b")
    worker_a = platform.process("worker-a", "cell.a")
    worker_b = platform.process("worker-b", "cell.b")
    heard: list[str] = []

    def hear(event: ChangeEvent) -> None:
        heard.append(event.key)

    front.groups.subscribe("", hear)  # before start: every group it holds
    for p in (front, worker_a):
        await p.start()
    try:
        # one connection for the three groups of one process
        conns = {id(n._conn) for n in front.nodes.values()}
        assert len(conns) == 1 and front._conn is not None and id(front._conn) in conns
        # and one probe of its one event loop
        assert len({id(n.loop_lag) for n in front.nodes.values()}) == 1
        async with front.write() as g:  # one block, three groups
            g.map("containers/c1").register("owner").set("ada")
            g.map("cells/a/containers/c1").register("power_desired").set("on")
            g.map("cells/b/containers/c2").register("power_desired").set("off")
        async with worker_a.write() as g:
            g.map("cells/a/containers/c1").register("power_actual").set("on")
        await worker_b.start()  # late: it joins cell b from the stream, and cell b only
        await until(lambda: front.groups.get("cells/a/containers/c1") == {
            "power_desired": "on", "power_actual": "on"}, 20, "worker-a's write at front")
        assert worker_b.groups.get("cells/b/containers/c2") == {"power_desired": "off"}
        # worker-a holds cell a only: nothing of the platform's or cell b's reached it
        assert worker_a.groups.items() == [("cells/a/containers/c1",
                                            {"power_desired": "on", "power_actual": "on"})]
        assert set(worker_a.nodes[platform.group("cell.a")].replica.clock) == {
            "front", "worker-a"}
        assert worker_b.groups.keys() == ["cells/b/containers/c2"]
        with pytest.raises(NotHeld, match="containers/c1"):
            worker_a.groups.map("containers/c1").register("owner").set("eve")
        assert front.groups.keys("cells/") == ["cells/a/containers/c1", "cells/b/containers/c2"]
        assert sorted(heard) == ["cells/a/containers/c1", "cells/a/containers/c1",
                                 "cells/b/containers/c2", "containers/c1"]
        assert all(h == {"broker": "ok", "membership": "ok", "delivery": "ok", "store": "ok",
                         "publish": "ok", "echo": "ok"} for h in front.health().values())
        front.snapshot()  # every group's log folded into its snapshot
        assert [n.store.log_size() for n in front.nodes.values()] == [0, 0, 0]
    finally:
        await asyncio.gather(front.stop(), worker_a.stop(), worker_b.stop())
    default = platform.routing.default
    assert [Path(store_for(front.settings, platform.group(g), "x", default)).name
            for g in ("platform", "cell.a", "cell.b")] == [
        "front.sqlite", f"front.{platform.base}.cell.a.sqlite",
        f"front.{platform.base}.cell.b.sqlite"]
    assert all(Path(store_for(front.settings, g, "x", default)).exists() for g in front.nodes)
    # a restart restores every group from its own store, and goes on replicating
    again = platform.process("front", "platform", "cell.a", "cell.b")
    worker_a = platform.process("worker-a", "cell.a")
    assert again.groups.get("containers/c1") == {"owner": "ada"}
    assert again.groups.get("cells/b/containers/c2") == {"power_desired": "off"}
    await asyncio.gather(again.start(), worker_a.start())
    try:
        async with again.write() as g:
            g.map("cells/a/containers/c1").register("power_desired").set("off")
        await until(lambda: (worker_a.groups.get("cells/a/containers/c1") or {}).get(
            "power_desired") == "off", 20, "the restarted front's write at worker-a")
    finally:
        await asyncio.gather(again.stop(), worker_a.stop())


def test_one_group_given_twice_or_none_is_refused(platform: Platform, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="each group once"):
        platform.process("front", "cell.a", "cell.a")
    with pytest.raises(ValueError, match="at least one"):
        platform.process("front")
    s = Settings(amqp_url=platform.url, store=str(tmp_path / "web.sqlite"))
    assert store_for(s, "cell.a", "web") == str(tmp_path / "web.cell.a.sqlite")
    assert store_for(s, "platform", "web", default="platform") == str(tmp_path / "web.sqlite")
    assert store_for(Settings(amqp_url=platform.url, replica_id="w1"), "g", "web") == (
        "crdt-ops.g.w1.sqlite")


@pytest.mark.asyncio
async def test_node_groups_over_the_memory_bus_route_writes_and_flush_each_group() -> None:
    routing = Routing("platform", {"cells/{}/": "cell.{}"})
    buses = {g: MemoryBus() for g in ("platform", "cell.a")}

    def process(rid: str, *groups: str) -> NodeGroups[MemoryNode]:
        return NodeGroups(routing, {g: MemoryNode(buses[g], rid) for g in groups})

    front, worker = process("front", "platform", "cell.a"), process("worker-a", "cell.a")
    with pytest.raises(ValueError, match="one replica id"):
        NodeGroups(routing, {"platform": MemoryNode(buses["platform"], "x"),
                             "cell.a": MemoryNode(buses["cell.a"], "y")})
    await front.start()
    await worker.start()
    async with front.write() as g:
        g.map("containers/c1").register("owner").set("ada")
        g.map("cells/a/containers/c1").register("power_desired").set("on")
    worker.groups.map("cells/a/containers/c1").register("power_actual").set("on")
    await worker.flush()
    await until(lambda: front.groups.get("cells/a/containers/c1") == {
        "power_desired": "on", "power_actual": "on"}, 5, "worker-a's write at front")
    assert worker.groups.keys() == ["cells/a/containers/c1"]
    assert front.node_of("cells/a/x") is front.nodes["cell.a"]
    with pytest.raises(NotHeld):
        worker.node_of("containers/c1")
    assert front.health() == {"platform": {}, "cell.a": {}}
    await front.stop()
    await worker.stop()
    assert buses["cell.a"].nodes == []


@pytest.mark.asyncio
async def test_a_group_that_refuses_to_start_stops_the_others(platform: Platform) -> None:
    cell = platform.process("worker-a", "cell.a")
    await cell.start()
    await cell.nodes[platform.group("cell.a")].leave()  # retired from cell a, for good
    await cell.stop()
    both = platform.process("worker-a", "platform", "cell.a")
    with pytest.raises(ValueError, match=r"worker-a was retired from group .*cell\.a"):
        await both.start()
    # every node of the failed start was stopped: its stores are free to open again
    again = platform.process("worker-a", "platform")
    await again.start()
    try:
        async with again.write() as g:
            g.counter("containers/n").increment()
        assert again.groups.get("containers/n") == 1
    finally:
        await again.stop()


async def _writes_through(platform: Platform, fault: Callable[[], Awaitable[None]],
                          n: int, what: str) -> None:
    """``front`` holds two groups over one connection and writes ``n`` times to each, every
    10 ms, while ``fault()`` runs; each group's peer has every write within 90 s."""
    front = platform.process("front", "platform", "cell.a")
    peers = [platform.process("worker-a", "cell.a"), platform.process("worker-b", "platform")]
    for p in (front, *peers):
        await p.start()
    try:
        async def write() -> None:
            for _ in range(n):
                async with front.write() as g:
                    g.counter("containers/n").increment()
                    g.counter("cells/a/n").increment()
                await asyncio.sleep(0.01)

        writing = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        await fault()
        await _within(writing, 120, f"a write hung after {what}")
        await until(lambda: peers[0].groups.get("cells/a/n") == n
                    and peers[1].groups.get("containers/n") == n, 90,
                    f"every write of both groups at their peers after {what}")
    finally:
        stopping = asyncio.ensure_future(asyncio.gather(*(p.stop() for p in (front, *peers))))
        await _within(stopping, 60, f"a stop hung after {what}")


async def _within(task: asyncio.Future[object], timeout_s: float, what: str) -> None:
    """Wait for ``task``; if it takes longer than ``timeout_s`` seconds, fail saying where
    every task waits, as they wait then (seen hanging in CI, 2026-12-07: a stop; a dump
    taken after ``wait_for`` had cancelled the stops showed none of them)."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        where = _tasks()
        task.cancel()
        raise AssertionError(f"{what}:\n{where}")
    task.result()


def _tasks() -> str:
    """Where each task of the running loop waits: the chain of coroutines it awaits
    through, innermost last, for a test's message."""
    out = []
    for task in asyncio.all_tasks():
        chain, coro = [], task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:"
                             f"{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        out.append(f"{task.get_name()}: " + " -> ".join(chain))
    return "\n".join(sorted(out))


@pytest.mark.asyncio
async def test_groups_sharing_a_connection_come_back_when_the_broker_closes_it(
        platform: Platform) -> None:
    from tests.broker import rabbitmqctl

    async def close() -> None:
        lines = (await asyncio.to_thread(rabbitmqctl, "list_connections", "pid",
                                         "client_properties", "-q")).splitlines()
        pids = [line.split("\t")[0] for line in lines if "crdt-ops front" in line]
        assert len(pids) == 1, lines  # one connection for both groups
        await asyncio.to_thread(rabbitmqctl, "close_connection", pids[0], "test closes it")
    await _writes_through(platform, close, 300, "the reconnect")


@pytest.mark.asyncio
async def test_groups_sharing_a_connection_ride_out_a_broker_restart_without_a_failure_logged(
        platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    """After the broker's restart each group's publisher found its channel not reopened yet
    by aio-pika, and a replica logged ``... failed ... ChannelInvalidStateError`` as a
    warning with a traceback, for a reconnection that lost nothing."""
    import logging

    from tests.broker import restart_broker_app

    caplog.set_level(logging.INFO, logger="crdt_ops")
    await _writes_through(platform, lambda: asyncio.to_thread(restart_broker_app, 2.0), 400,
                          "the restart")
    failures = [m for r in caplog.records if r.name.startswith("crdt_ops")
                and r.levelno >= logging.WARNING and "failed; going on" in (m := r.getMessage())]
    assert not failures, failures


def test_a_peers_snapshot_starts_the_default_group_only(platform: Platform,
                                                         tmp_path: Path) -> None:
    from crdt_ops import Replica

    peer = Replica("peer")
    peer.map("containers/c1").register("owner").set("ada")
    snapshot = tmp_path / "platform.snapshot"
    snapshot.write_bytes(peer.snapshot())
    s = Settings(amqp_url=platform.url, group=platform.group("platform"), replica_id="front",
                 store=str(tmp_path / "front.sqlite"), bootstrap=str(snapshot))
    front = AmqpGroups(s, platform.routing, [platform.group("platform"),
                                             platform.group("cell.a")])
    try:
        assert front.groups.get("containers/c1") == {"owner": "ada"}
        assert front.nodes[platform.group("cell.a")].replica.keys() == []
    finally:
        for node in front.nodes.values():
            node.store.close()


@pytest.mark.asyncio
async def test_a_sole_principal_is_one_process_across_groups(platform: Platform) -> None:
    """Logic knows nodes by name: two workers of node ``w1`` in two cells took each other's
    containers. Each holds its own cell's group only, and the principal's holder queue is
    in the routing's default group all the same: the second waits."""
    first = platform.process("worker.w1.a", "cell.a", sole="worker.w1")
    second = platform.process("worker.w1.b", "cell.b", sole="worker.w1")
    await first.start()
    starting = asyncio.ensure_future(second.start())
    try:
        await asyncio.sleep(2.0)
        assert not starting.done()
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await asyncio.gather(first.stop(), second.stop(), return_exceptions=True)


@pytest.mark.asyncio
async def test_a_sole_process_cut_off_while_its_standby_took_over_learns_it_lost(
        platform: Platform) -> None:
    """The broker dropped the first logic's connection, and a standby took its principal's
    holder queue before it reconnected. The first, reconnected, may not publish (the queue
    is taken), but it decided on from a state that no longer grew, and would send that
    once the other stopped: it now learns it lost (``sole_lost``), and the services stop
    it (services/main.py)."""
    first = platform.process("logic.a", "platform", "cell.a", sole="logic")
    await first.start()
    lost = asyncio.ensure_future(first.sole_lost())
    standby = None
    try:
        await asyncio.sleep(0.5)
        assert not lost.done()
        standby = await cut_off_and_take_over(platform.url, platform.group("platform"),
                                              "logic", "logic.a")
        await asyncio.wait_for(lost, 30)  # the first, reconnected, learns it lost
    finally:
        lost.cancel()
        if standby is not None:
            await standby.close()
        await first.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("rid", ["", "logic.a"])
async def test_what_a_deposed_process_committed_while_cut_off_is_never_sent(
        platform: Platform, rid: str) -> None:
    """The services' logic, cut off while its standby took over, decided on from a state
    that no longer grew, and committed it: placed a container. Published once it ran again,
    that placement would start the container on a node its successor had not placed it on,
    beside the copy its successor had started. Now the deposed process's stores are marked
    (:mod:`crdt_ops.transport.deposition`); started again, it sets them aside and runs as a
    new replica: under a new id (none given), which retires the old one; under the same id
    (given), numbering its next operation after its last one in the stream. What it
    committed while cut off reaches nobody."""
    def logic() -> AmqpGroups:
        s = Settings(amqp_url=platform.url, group=platform.group("platform"), replica_id=rid,
                     heartbeat_s=0.5, store=str(platform.workdir / "logic.sqlite"))
        return AmqpGroups(s, platform.routing, [platform.group("platform"),
                                                platform.group("cell.a")],
                          name="logic", sole="logic")

    observer = platform.process("front", "platform", "cell.a")
    heard: list[str] = []
    observer.groups.subscribe("", lambda e: heard.append(e.key))
    first = logic()
    await asyncio.gather(observer.start(), first.start())
    old = first.replica_id
    standby, second = None, None
    try:
        async with first.write() as g:
            g.map("containers/c1").register("node").set("n1")
            g.map("cells/a/containers/n1/c1").register("power_desired").set("on")
        await until(lambda: observer.groups.get("cells/a/containers/n1/c1") is not None, 20,
                    "the first logic's placement at the observer")
        lost = asyncio.ensure_future(first.sole_lost())
        standby = await cut_off_and_take_over(platform.url, platform.group("platform"),
                                              "logic", old)
        async with first.write() as g:  # decided while cut off: accepted, in its stores
            g.map("containers/c2").register("node").set("n2")
            g.map("cells/a/containers/n2/c2").register("power_desired").set("on")
        await asyncio.wait_for(lost, 30)  # reconnected, it learns it lost
        await first.stop()
        await standby.close()  # the successor stops: the deposed one's next process runs
        standby = None
        second = logic()
        assert all(n.durable.aside is not None for n in second.nodes.values())
        await second.start()
        async with second.write() as g:
            g.map("containers/c3").register("node").set("n3")
            g.map("cells/a/containers/n3/c3").register("power_desired").set("on")
        await until(lambda: observer.groups.get("cells/a/containers/n3/c3") is not None
                    and observer.groups.get("containers/c3") is not None, 20,
                    "the second logic's writes at the observer")
        assert "containers/c2" not in heard and "cells/a/containers/n2/c2" not in heard
        assert second.groups.get("containers/c2") is None  # set aside with its store
        assert (second.replica_id == old) == bool(rid)
        if not rid:  # the old id retired in both groups, by its successor
            await until(lambda: all(old in n.replica.membership.retired
                                    for n in observer.nodes.values()), 20,
                        f"{old}'s retirement at the observer")
            await until(lambda: all(n.durable.replaces == () for n in second.nodes.values()),
                        20, f"{old} retired and its queues deleted")
            # its queues deleted: nobody reads them again, and they would fill for good
            queues = (await asyncio.to_thread(rabbitmqctl, "list_queues", "name", "-q")).split()
            assert not {Topology(g).queue(old) for g in second.nodes} & set(queues)
        assert observer.groups.get("containers/c1") == {"node": "n1"}
    finally:
        await asyncio.gather(*(p.stop() for p in (observer, first, second) if p is not None))
        if standby is not None:
            await standby.close()
        for g in ("platform", "cell.a"):  # (the fixture deletes those of its own ids)
            await delete_group_async(platform.url, platform.group(g),
                                     {old, second.replica_id if second else old})


@pytest.mark.asyncio
@pytest.mark.parametrize(("consume", "successor"), [
    ("stream", ("platform", "cell.a")), ("queue", ("platform", "cell.a")),
    ("stream", ("cell.a",)), ("stream", ()), ("queue", ())])
async def test_a_process_cut_off_whose_successor_wrote_and_stopped_never_sends_its_unsent(
        platform: Platform, consume: str, successor: tuple[str, ...],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first logic is cut off (its link to the broker drops); a standby takes over,
    writes, and stops before the first one's link comes back. Its principal's holder queue
    is free again, so taking it says nothing: the first one, reconnected, now reads its
    groups' streams before it publishes, finds the other one's operations, and is deposed.
    The placement it decided while cut off reaches nobody.

    ``successor``: the groups the standby writes in: in both, or in ``cell.a`` only while
    the first one's stale operation is in ``platform`` only (one check for every group of
    the process); none: no standby, and the placement goes out once the link is back, as
    before. ``consume="queue"`` (as a worker): it reads the stream from shortly before the
    broker last answered it on the lost link (the margin cut to 0.5 s here, so that a read
    from later would miss the standby's operations)."""
    monkeypatch.setattr("crdt_ops.transport.amqp.node.RESUME_MARGIN_S", 0.5)
    caplog.set_level(logging.INFO, "crdt_ops.transport.amqp.retake")
    proxy = Proxy(platform.url)
    first = platform.logic(proxy.url, consume=consume)
    observer = platform.process("front", "platform", "cell.a")
    heard: list[str] = []
    observer.groups.subscribe("", lambda e: heard.append(e.key))
    await asyncio.gather(observer.start(), first.start())
    other = platform.process("logic.b", "platform", "cell.a", sole="logic")
    lost = asyncio.ensure_future(first.sole_lost())
    try:
        await place_c1(first, observer)
        proxy.down()  # cut off: the broker closes its connection, and frees the queue
        if successor:
            await other.start()  # took over
            async with other.write() as g:
                if "platform" in successor:
                    g.map("containers/c2").register("node").set("n3")
                g.map("cells/a/containers/n3/c2").register("power_desired").set("on")
        async with first.write() as g:  # decided while cut off: accepted, in its stores
            g.map("containers/c2").register("node").set("n2")
            if successor != ("cell.a",):
                g.map("cells/a/containers/n2/c2").register("power_desired").set("on")
        if successor:
            await until(lambda: observer.groups.get("cells/a/containers/n3/c2") is not None,
                        20, "the successor's placement at the observer")
            await other.stop()  # before the first one's link comes back
            if consume == "queue":  # (later chunks in the stream: a read from too late
                await asyncio.sleep(3)  # would start after the successor's operations)
        proxy.up()
        if not successor:
            await until(lambda: observer.groups.get("containers/c2") is not None,
                        30, "the first one's placement, sent once it reconnected")
            assert not lost.done()
            assert "no other process of it wrote meanwhile" in caplog.text
            return
        await asyncio.wait_for(lost, 30)  # reconnected, it read the streams: deposed
        assert "while this one was cut off from the broker" in caplog.text  # (not the holder)
        assert all(n.durable.store.get("deposed") == b"1" for n in first.nodes.values())
        await asyncio.sleep(2.0)  # (time enough for a publish that should not go)
        assert "cells/a/containers/n2/c2" not in heard
        assert heard.count("containers/c2") == ("platform" in successor), heard
        assert observer.groups.get("containers/c2") == (
            {"node": "n3"} if "platform" in successor else None)
        # nor did the probe and the marker of its check name them: nobody waits for them
        assert all("logic.a" not in n.replica.missing() for n in observer.nodes.values())
    finally:
        lost.cancel()
        proxy.down()
        await asyncio.gather(*(p.stop() for p in (observer, first, other)))
        for g in ("platform", "cell.a"):
            await delete_group_async(platform.url, platform.group(g), {"logic.a", "logic.b"})


@pytest.mark.asyncio
async def test_a_link_broken_on_the_process_side_only_is_waited_out_not_taken_for_a_successor(
        platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    """The first logic's link breaks on its side only: the broker keeps its old connection,
    and with it the principal's holder queue, until its heartbeat timeout (2 s here). The
    first one reconnects at once and finds the queue taken, by its own old connection, not
    by another process: it waits for the broker to drop that one, takes the queue again, and
    sends what it committed meanwhile (it used to be deposed for it)."""
    proxy = Proxy(platform.url)
    first = platform.logic(f"{proxy.url}?heartbeat=2")
    observer = platform.process("front", "platform", "cell.a")
    await asyncio.gather(observer.start(), first.start())
    lost = asyncio.ensure_future(first.sole_lost())
    try:
        await place_c1(first, observer)
        caplog.set_level(logging.WARNING, "crdt_ops.transport.amqp.holder")
        proxy.half_open()
        async with first.write() as g:  # committed while its link is down
            g.map("containers/c2").register("node").set("n2")
            g.map("cells/a/containers/n2/c2").register("power_desired").set("on")
        await until(lambda: observer.groups.get("cells/a/containers/n2/c2") is not None, 40,
                    "the placement, sent once the broker dropped the old connection")
        assert "its own earlier connection still holds" in caplog.text  # (it did wait)
        assert not lost.done()
        assert all(n.durable.store.get("deposed") is None for n in first.nodes.values())
    finally:
        lost.cancel()
        proxy.down()
        await asyncio.gather(observer.stop(), first.stop())
        for g in ("platform", "cell.a"):
            await delete_group_async(platform.url, platform.group(g), {"logic.a"})


@pytest.mark.asyncio
async def test_a_process_cut_off_while_another_under_its_replica_id_took_over_is_deposed(
        platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    """A second process under the first one's replica id (a misconfiguration: a standby
    given the same ``--replica-id``, a store of its own) takes over while the first is cut
    off, and runs on. Reconnected, the first finds both its queues held by one connection,
    as when its own earlier one is still held by the broker: it waits, but no longer than
    that can last (two heartbeat timeouts and 10 s), and is then deposed."""
    proxy = Proxy(platform.url)
    first = platform.logic(f"{proxy.url}?heartbeat=2", ("platform",))
    twin = platform.logic(f"{platform.url}?heartbeat=2", ("platform",), "twin.sqlite")
    observer = platform.process("front", "platform")
    await asyncio.gather(observer.start(), first.start())
    lost = asyncio.ensure_future(first.sole_lost())
    try:
        await place_c1(first, observer)
        proxy.down()
        await twin.start()  # took over, under the same id
        async with first.write() as g:  # committed while cut off
            g.map("containers/c2").register("node").set("n2")
        caplog.set_level(logging.WARNING, "crdt_ops.transport.amqp.holder")
        t0 = time.monotonic()
        proxy.up()
        await asyncio.wait_for(lost, 60)
        assert "its own earlier connection still holds" in caplog.text  # it waited first
        assert time.monotonic() - t0 >= 2 * 2 + 10 - 1
        assert observer.groups.get("containers/c2") is None
    finally:
        lost.cancel()
        proxy.down()
        await asyncio.gather(observer.stop(), first.stop(), twin.stop())
        await delete_group_async(platform.url, platform.group("platform"), {"logic.a"})


@pytest.mark.asyncio
async def test_a_process_down_while_another_of_its_principal_wrote_never_sends_its_unsent(
        platform: Platform) -> None:
    """Logic committed a decision and died before it was sent (killed, its machine
    rebooted); another logic ran meanwhile and decided without it. Started again, the
    first would take over and send it: its resumed read of the stream now shows the other
    one's operations, so it refuses to start (Deposed), its stores marked, and its next
    start sets them aside: the decision reaches nobody."""
    from crdt_ops.errors import Deposed
    from crdt_ops.transport.durable import DurableReplica

    observer = platform.process("front", "platform")
    heard: list[str] = []
    observer.groups.subscribe("", lambda e: heard.append(e.key))
    first = platform.process("logic.a", "platform", sole="logic")
    await asyncio.gather(observer.start(), first.start())
    try:
        await place_c1(first, observer)
        await first.stop()
        # its decision, committed as it died: in its store's outbox, never sent
        durable = DurableReplica.open(first.settings)
        durable.replica.map("containers/c2").register("node").set("n2")
        durable.commit()
        await durable.close()
        other = platform.process("logic.b", "platform", sole="logic")
        await other.start()
        async with other.write() as g:
            g.map("containers/c2").register("node").set("n3")
        await other.stop()
        again = platform.process("logic.a", "platform", sole="logic")
        with pytest.raises(Deposed, match=r"logic\.b, of its principal logic, wrote"):
            await again.start()
        await again.stop()
        third = platform.process("logic.a", "platform", sole="logic")
        assert all(n.durable.aside is not None for n in third.nodes.values())
        await third.start()
        try:
            async with third.write() as g:
                g.map("containers/c4").register("node").set("n4")
            await until(lambda: observer.groups.get("containers/c4") is not None, 20, "c4")
            assert observer.groups.get("containers/c2") == {"node": "n3"}
            assert heard.count("containers/c2") == 1  # logic.b's, never logic.a's
            assert third.groups.get("containers/c2") == {"node": "n3"}
            # and no report of logic.a's claimed it: the observer waits for nothing (its
            # start's probe and marker, published before it knew, claimed its clock)
            assert all(n.replica.missing() == {} for n in observer.nodes.values())
        finally:
            await third.stop()
    finally:
        await asyncio.gather(observer.stop(), first.stop())

