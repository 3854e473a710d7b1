"""The transport in one process: channel failures, and waiting for durability."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from tests.broker import group_settings, new_group, started, until


@pytest.fixture(params=["queue", "stream"])
def settings(amqp_url: str, tmp_path: Path, request: pytest.FixtureRequest
             ) -> Iterator[Settings]:
    """A new group, its replicas receiving through queues of their own or its stream."""
    for s in group_settings(amqp_url, tmp_path, heartbeat_s=0.5):
        yield Settings(**{**s.__dict__, "consume": request.param})


@pytest.mark.asyncio
async def test_channels_closed_by_channel_errors_are_reopened(settings: Settings) -> None:
    async with started(settings, "a", "b") as (a, b):
        async with a.write() as r:
            r.counter("n").increment()
        await until(lambda: b.replica.counter("n").value == 1, 20, "first delivery")
        # a channel error (redeclaring the stream as a classic queue) closes each channel
        for channel in (a._pub, a._consume_channel):
            assert channel is not None
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(Topology.of(settings).stream, durable=True,
                                            arguments={"x-queue-type": "classic"})
        async with a.write() as r:
            r.counter("n").increment(10)
        async with b.write() as r:
            r.counter("n").increment(100)
        await until(lambda: b.replica.counter("n").value == 111, 30, "a's publishing to resume")
        await until(lambda: a.replica.counter("n").value == 111, 30, "a's consuming to resume")


@pytest.mark.asyncio
async def test_writes_are_durable_when_write_returns_even_without_a_broker(
        tmp_path: Path) -> None:
    from crdt_ops import Replica
    from crdt_ops.transport.store import Store

    s = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group=new_group(),
                 replica_id="lonely", store=str(tmp_path / "lonely.sqlite"))
    # as if it had founded its group in an earlier run: its founding is in its store
    before = Replica("lonely")
    before.found()
    store = Store(s.store)
    store.append((), before.outgoing())
    store.close()
    n = AmqpNode(s)
    start = asyncio.get_running_loop().create_task(n.start())  # keeps retrying: no broker
    async with n.write() as r:
        r.counter("n").increment(5)
    health = n.health()  # what /healthz shows (503: not all "ok")
    assert health["broker"].startswith("connecting to amqp://guest:***@127.0.0.1:1/"), health
    assert health["store"] == "ok" and health["delivery"] == "ok"
    assert [len(b) for _, b in n.store.unconfirmed()], "the write is in the outbox"
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    n.store.close()
    again = AmqpNode(s)
    assert again.replica.counter("n").value == 5
    assert again.store.unconfirmed()
    again.store.close()


def test_bootstrap_takes_a_peers_state_and_clock_but_not_its_identity(tmp_path: Path) -> None:
    from crdt_ops import Replica

    peer = Replica("peer")
    peer.counter("n").increment(7)
    peer.outgoing()
    peer.counter("n").increment(1)  # unsent: the peer still owns it
    snap = tmp_path / "peer.snapshot"
    snap.write_bytes(peer.snapshot())
    s = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g", replica_id="new",
                 store=str(tmp_path / "new.sqlite"), bootstrap=str(snap))
    n = AmqpNode(s)
    try:
        assert n.replica.replica_id == "new"
        assert n.replica.counter("n").value == 8 and dict(n.replica.clock) == {"peer": 2}
        assert n.replica.unsent == 0 and n.replica.outgoing() == []
    finally:
        n.store.close()
    again = AmqpNode(s)  # restarts from its own store, not the bootstrap file
    try:
        assert again.replica.counter("n").value == 8
    finally:
        again.store.close()


def test_replay_progress_shows_a_bar_percent_and_time_left() -> None:
    from crdt_ops.transport.amqp.recovery import Progress

    p = Progress("replaying crdt.g.log", total=200)
    p.advance(50)
    assert "[#######" in p.line() and " 25% 50/200 messages" in p.line()
    assert p.line().endswith("s left")
    unknown = Progress("replaying crdt.g.log")
    unknown.advance(7)
    assert "7 messages" in unknown.line() and "%" not in unknown.line()


def test_a_store_refuses_the_other_membership_mode(tmp_path: Path) -> None:
    s = Settings(group=new_group(), replica_id="a", store=str(tmp_path / "a.sqlite"),
                 membership="open")
    AmqpNode(s).store.close()
    with pytest.raises(ValueError, match="created with --membership open, not managed"):
        AmqpNode(Settings(**{**s.__dict__, "membership": "managed"}))
    AmqpNode(s).store.close()  # the store was left as it was
