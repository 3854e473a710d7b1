"""Sub-groups over the real broker (:mod:`crdt_ops.subgroups`,
:mod:`crdt_ops.transport.topology`): a replica that holds one sub-group is routed that
sub-group's messages and the common part's only, converges on them, hears its own echo
(its heartbeats: its operations on a sub-group it holds alone are not routed back to it),
and a late one joins from the stream, skipping the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio

from crdt_ops.ops import Heartbeat
from crdt_ops.subgroups import SubGroups
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.amqp.publisher import HEARTBEAT_TO_ALL_EVERY
from crdt_ops.transport.config import Settings
from crdt_ops.wire import codec
from tools.harness import delete_group_async, new_group, until

RULE = SubGroups(keys=("nodes/{}",), holders=("worker.{}",))
IDS = ["logic", "web", "worker.n1", "worker.n2"]


class Group:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir, self.name = url, workdir, new_group()
        self.nodes: dict[str, AmqpNode] = {}

    def node(self, rid: str, consume: str = "queue") -> AmqpNode:
        s = Settings(amqp_url=self.url, group=self.name, replica_id=rid, heartbeat_s=0.5,
                     gap_timeout_s=2, consume=consume,
                     store=str(self.workdir / f"{rid}.sqlite"))
        self.nodes[rid] = AmqpNode(s, subgroups=RULE)
        return self.nodes[rid]


@pytest_asyncio.fixture
async def group(amqp_url: str, tmp_path: Path) -> AsyncIterator[Group]:
    g = Group(amqp_url, tmp_path)
    try:
        yield g
    finally:
        for n in g.nodes.values():
            await n.stop()
        await delete_group_async(amqp_url, g.name, [*IDS, "worker.n1.late"])


@pytest.mark.asyncio
async def test_a_replica_holding_one_sub_group_is_routed_its_messages_only(
        group: Group, amqp_url: str) -> None:
    logic = group.node("logic", consume="stream")
    w1, w2 = group.node("worker.n1"), group.node("worker.n2")
    await logic.start()
    # worker n2's queue as it was before the group had sub-groups: bound to the fanout
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        old = await ch.declare_queue(f"crdt.{group.name}.worker.n2", durable=True,
                                     arguments={"x-queue-type": "classic"})
        await old.bind(f"crdt.{group.name}")
    for n in (w1, w2):
        await n.start()
    async with logic.write() as r:
        r.register("common").set("all")
        for i in range(5):
            r.map("nodes/n1").register(f"x{i}").set(i)
            r.map("nodes/n2").register(f"x{i}").set(i)
    async with w1.write() as r:
        r.map("nodes/n1").register("beat").set(1)
    async with w2.write() as r:
        r.map("nodes/n2").register("beat").set(2)
    await until(lambda: logic.replica.get("nodes/n1", {}).get("beat") == 1
                and logic.replica.get("nodes/n2", {}).get("beat") == 2, 20,
                "the workers' writes at logic")
    await until(lambda: w1.replica.get("nodes/n1", {}).get("x4") == 4
                and w2.replica.get("nodes/n2", {}).get("x4") == 4, 20,
                "logic's writes at the workers")
    full = logic.replica.state()
    assert w1.replica.state() == {k: v for k, v in full.items() if k != "nodes/n2"}
    assert w2.replica.state() == {k: v for k, v in full.items() if k != "nodes/n1"}
    # the broker left the other node's messages out of each worker's queue (n2's old
    # binding to the fanout was taken away)
    assert w1.replica.stats["skipped"] == w2.replica.stats["skipped"] == 0
    assert not any("#n2" in c for c in w1.replica.clock)
    # worker n1 holds n1 alone: its operations on it go to the whole holders (and the
    # stream) only, not back to its own queue; its heartbeats still come back there (its
    # echo: heard_through advances)
    keys: list[tuple[str, str]] = []
    send = w1._out._send

    async def recording(body: bytes, exchange: str, routing_key: str) -> None:
        keys.append((type(codec.decode(body)).__name__, routing_key))
        await send(body, exchange, routing_key)

    w1._out._send = recording  # type: ignore[method-assign]
    assert w1.replica.sole_holder()
    before = w1.heard_through()
    async with w1.write() as r:
        r.map("nodes/n1").register("beat").set(3)
    await until(lambda: logic.replica.get("nodes/n1", {}).get("beat") == 3, 20,
                "worker n1's write at logic")
    await until(lambda: w1.heard_through() > before, 20, "worker n1's echo")
    assert ("Batch", "whole") in keys and ("Batch", "sub.n1") not in keys, keys
    # the queue's bindings: the routed exchange, with its sub-group's key and the common one
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel()
        routed = await ch.get_exchange(f"crdt.{group.name}.routed")
        assert routed.name == f"crdt.{group.name}.routed"
    # a late worker of n1 joins from the stream, skipping n2's messages there
    late = group.node("worker.n1.late")
    await late.start()
    await until(lambda: late.replica.get("nodes/n1", {}).get("beat") == 3, 20,
                "the late worker's replay")
    assert late.replica.get("nodes/n2") is None and late.replica.stats["skipped"] > 0
    # n1 is held twice now: worker n1's operations on it go to n1's key again, which the
    # late worker's queue is bound to
    await until(lambda: not w1.replica.sole_holder(), 20, "the late worker's admission at n1")
    keys.clear()
    async with w1.write() as r:
        r.map("nodes/n1").register("beat").set(4)
    await until(lambda: late.replica.get("nodes/n1", {}).get("beat") == 4, 20,
                "worker n1's write at the late worker")
    assert ("Batch", "sub.n1") in keys and ("Batch", "whole") not in keys, keys
    w1._out._send = send  # type: ignore[method-assign]
    # logic's plain heartbeats reach the workers one in HEARTBEAT_TO_ALL_EVERY only
    heard = 0
    receive = w1.replica.receive

    def counting(data: bytes, sender: str | None = None) -> bool:
        nonlocal heard
        msg = codec.decode(data)
        heard += isinstance(msg, Heartbeat) and msg.origin == "logic"
        return receive(data, sender)

    w1.replica.receive = counting  # type: ignore[method-assign]
    sent = logic.heartbeats
    await asyncio.sleep(6)  # about 12 of logic's heartbeats (every 0.5 s, jittered)
    sent = logic.heartbeats - sent
    assert sent >= 8 and heard <= sent // HEARTBEAT_TO_ALL_EVERY + 1, (sent, heard)
    w1.replica.receive = receive  # type: ignore[method-assign]
    # causal stability of n1's channels waits for n1's holders only: it moves with n2 silent
    await w2.stop()
    async with logic.write() as r:
        r.map("nodes/n1").register("after").set(1)
    await until(lambda: logic.replica.stable_clock().get("logic#n1", 0)
                == logic.replica.clock["logic#n1"], 20,
                "logic's n1 operations stable without worker n2")


def test_what_reaches_a_members_queue_follows_its_bindings() -> None:
    """The publisher expects its message back through its own queue exactly when the
    routing key it used is one the queue is bound to (Topology.member)."""
    from crdt_ops.transport.topology import Topology

    routed, plain = Topology("g", routed=True), Topology("g")
    for key in ("", "common", "sub.n1", "sub.n2", Topology.WHOLE):
        assert plain.reaches_member(key) and plain.reaches_member(key, "n1")
        assert routed.reaches_member(key)  # a whole holder gets everything
    assert routed.reaches_member("common", "n1") and routed.reaches_member("sub.n1", "n1")
    assert not routed.reaches_member("sub.n2", "n1")
    assert not routed.reaches_member(Topology.WHOLE, "n1")
