"""One process at a time runs a replica (crdt_ops/transport/amqp/holder.py): a second
one started with the same replica id waits, saying why, until the first stops; over the
real broker."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.amqp.holder import Holder
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from tests.broker import cut_off_and_take_over, group_settings, memory_watermark, rabbitmqctl, until


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    yield from group_settings(amqp_url, tmp_path, heartbeat_s=0.3, replicas=("a", "k"))


def _as(s: Settings, rid: str, store: str) -> AmqpNode:
    return AmqpNode(Settings(**{**s.__dict__, "replica_id": rid,
                                "store": f"{s.store}/{store}.sqlite"}))


@pytest.mark.asyncio
async def test_a_second_process_of_a_replica_waits_until_the_first_stops(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.holder")
    first, second = _as(settings, "a", "first"), _as(settings, "a", "second")
    await first.start()
    starting = asyncio.ensure_future(second.start())
    try:
        async with first.write() as r:
            r.counter("n").increment(1)
        await asyncio.sleep(1.5)
        assert not starting.done()  # it has not joined, read, or written anything
        assert second.replica.counter("n").value == 0
        assert any("runs in another process" in r.getMessage() for r in caplog.records)
        await first.stop()
        await asyncio.wait_for(starting, 15)  # the first is gone: it takes over
        await until(lambda: second.replica.counter("n").value == 1, 10,
                    "the second to read what the first wrote")
    finally:
        starting.cancel()
        await first.stop()
        await second.stop()


@pytest.mark.asyncio
async def test_a_replica_whose_holder_queue_another_connection_took_while_it_reconnected_waits(
        settings: Settings) -> None:
    """Its connection lost, a replica reconnected and published and consumed at once, though
    another process of its id (waiting in ``hold()``) had taken the queue meanwhile: two
    processes ran one replica id. Now it publishes and consumes only once it holds the
    queue again, and then sends what it wrote meanwhile."""
    a, k = _as(settings, "a", "a"), _as(settings, "k", "k")
    await a.start()
    await k.start()
    other: aio_pika.abc.AbstractConnection | None = None
    queue = Topology.of(settings).holder("a")
    try:
        async with a.write() as r:
            r.counter("n").increment(1)
        await until(lambda: k.replica.counter("n").value == 1, 10, "k to hear a")
        # "a second process" of a takes the queue as soon as the broker frees it (asking
        # from before the close: a's own reconnection may not win)
        other = await cut_off_and_take_over(settings.amqp_url, settings.group, "a", "a")
        await until(lambda: a._lost_at is None and a._conn is not None, 20, "a to reconnect")
        await asyncio.sleep(1.5)  # several heartbeats and echo ticks
        async with a.write() as r:  # accepted (durable), not sent while the other holds it
            r.counter("n").increment(1)
        await asyncio.sleep(2.0)
        assert k.replica.counter("n").value == 1, "a published while another connection " \
            f"held {queue}: two processes ran one replica id"
        await other.close()  # the other process stops: a takes over and sends its write
        await until(lambda: k.replica.counter("n").value == 2, 15, "a's write to reach k")
    finally:
        if other is not None:
            await other.close()
        await a.stop()
        await k.stop()


@pytest.mark.asyncio
async def test_a_replica_started_again_after_a_stop_does_not_wait(settings: Settings) -> None:
    for _ in range(3):
        n = _as(settings, "a", "a")
        await asyncio.wait_for(n.start(), 10)
        await n.stop()


@pytest.mark.asyncio
async def test_a_killed_process_leaves_no_wait(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL: the OS closes its connection, the broker drops its holder queue at once,
    and the replica started again from the same store is up within seconds (not after
    the broker's heartbeat timeout, 60 s)."""
    store = tmp_path / "killed.sqlite"
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "replica", "--amqp-url", settings.amqp_url,
         "--group", settings.group, "--replica-id", "k", "--store", str(store),
         "--heartbeat-s", "0.3", "--state-file", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await until(state.exists, 30, "the replica process to be up")
    finally:
        proc.kill()
        proc.wait()
    again = AmqpNode(Settings(**{**settings.__dict__, "replica_id": "k",
                                 "store": str(store)}))
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(again.start(), 20)
        assert time.monotonic() - t0 < 10
    finally:
        await again.stop()


@pytest.mark.asyncio
async def test_a_broker_user_that_may_not_declare_it_runs_unguarded_and_says_so(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdt_ops.transport.amqp.holder")
    g = re.escape(f"crdt.{settings.group}")
    user, password = f"noholder-{settings.group}", "pw"
    rabbitmqctl("add_user", user, password)
    try:  # everything a replica "a" declares, but not its holder queue
        rabbitmqctl("set_permissions", "-p", "/", user,
                    f"^{g}(\\.(log|dlx|dead|founder|founders|routed|a))?$", ".*", ".*")
        url = settings.amqp_url.replace("guest:guest@", f"{user}:{password}@")
        n = AmqpNode(Settings(**{**settings.__dict__, "amqp_url": url, "replica_id": "a",
                                 "store": f"{settings.store}/a.sqlite"}))
        try:
            await asyncio.wait_for(n.start(), 20)
            async with n.write() as r:
                r.counter("n").increment(1)
        finally:
            await n.stop()
        assert any("may not declare" in r.getMessage() for r in caplog.records)
    finally:
        rabbitmqctl("delete_user", user)


# a process of replica "a" that takes its holder queue, then publishes to the group's
# stream without waiting for confirms, through a connection that does not announce
# connection.blocked: the broker then does not say it stopped reading (RabbitMQ,
# "Blocked Connection Notifications"), and aiormq keeps writing, so the publishes wait
# unread in the broker's socket
_OLD_PROCESS = """
import asyncio, sys
import aio_pika
url, held, stream, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    caps = {"authentication_failure_close": True, "basic.nack": True,
            "consumer_cancel_notify": True, "publisher_confirms": True}
    conn = await aio_pika.connect(url, client_properties={"capabilities": caps})
    await (await conn.channel()).declare_queue(held, exclusive=True, auto_delete=False)
    pub = await conn.channel(publisher_confirms=False)
    print("holding", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for i in range(n):
        await pub.default_exchange.publish(
            aio_pika.Message(b"old", message_id=f"old-{i}", delivery_mode=2),
            routing_key=stream)
    print("written", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_what_a_blocked_connection_sent_is_routed_before_its_holder_queue_is_freed(
        settings: Settings) -> None:
    """The fence that publishing before a disk sync would rest on (docs/latency.md):
    while the broker does not read a connection (a memory alarm; credit flow does the
    same), that connection keeps the holder queue, and a new process of the replica
    waits; once the broker reads it again, whatever it routes of it, it routes before it
    frees the queue: nothing of the old process comes after a marker the new process
    publishes once it holds the queue. (What the broker had not read it may drop instead,
    as it did in most runs of this; docs/latency.md.) The broker's memory alarm is
    raised, for every connection, for about two seconds."""
    k = AmqpNode(Settings(**{**settings.__dict__, "replica_id": "k",
                             "store": f"{settings.store}/k.sqlite"}))
    await asyncio.wait_for(k.start(), 20)  # the group, its stream
    topology = Topology.of(settings)
    holder = Holder(topology, "a")
    old = subprocess.Popen([sys.executable, "-c", _OLD_PROCESS, settings.amqp_url,
                            holder.queue, topology.stream, "50"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    conn = await aio_pika.connect(settings.amqp_url)
    watermark = memory_watermark()
    try:
        assert old.stdout is not None and old.stdin is not None
        assert (await asyncio.to_thread(old.stdout.readline)).strip() == "holding"
        rabbitmqctl("set_vm_memory_high_watermark", "0")  # the broker stops reading
        await asyncio.sleep(1.0)
        old.stdin.write("go\n")
        old.stdin.flush()
        assert (await asyncio.to_thread(old.stdout.readline)).strip() == "written"
        old.kill()
        old.wait()
        for _ in range(3):  # the broker has not read the socket's end: the queue is held
            assert not await holder.take(conn)
            await asyncio.sleep(0.2)
        rabbitmqctl("set_vm_memory_high_watermark", *watermark)
        await asyncio.wait_for(holder.hold(conn), 15)
        channel = await conn.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"marker", message_id="marker"), routing_key=topology.stream)
        ids = await _ids_through(conn, topology.stream, "marker")
        after = [i for i in ids[ids.index("marker") + 1:] if i and i.startswith("old-")]
        assert after == []
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *watermark)
        old.kill()
        old.wait()
        await conn.close()
        await k.stop()


async def _ids_through(conn: aio_pika.abc.AbstractConnection, stream: str, marker: str,
                       after_s: float = 2.0) -> list[str | None]:
    """The message ids of stream ``stream`` from its start to ``marker``, and of what comes
    within ``after_s`` after it (other replicas' heartbeats go on)."""
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=1000)
    got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    queue = await channel.get_queue(stream)
    await queue.consume(got.put, no_ack=False, arguments={"x-stream-offset": "first"})
    ids: list[str | None] = []
    deadline: float | None = None
    while deadline is None or time.monotonic() < deadline:
        try:
            m = await asyncio.wait_for(got.get(), 0.2 if deadline else 15)
        except TimeoutError:
            assert deadline is not None, f"{marker} not read from {stream}"
            continue
        await m.ack()
        ids.append(m.message_id)
        if m.message_id == marker:
            deadline = time.monotonic() + after_s
    await channel.close()
    return ids


@pytest.mark.asyncio
async def test_a_standby_whose_connection_was_lost_lets_the_process_it_waits_for_retake(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A broker restart loses every connection: the placing process and its standby both
    reconnect, and whoever asks first takes the principal's queue. The standby asked at
    once and could win (crdt-ops platform-chaos saw it once in 16 broker faults): the other
    was deposed, exited and came back as a new replica for nothing. Here the standby
    reconnects first, by a second; it waits STANDBY_YIELD_S before it asks, and the other
    takes its queue back."""
    caplog.set_level(logging.INFO, logger="crdt_ops.transport.amqp.holder")
    topology = Topology.of(settings)
    sole = topology.holder("logic")
    placing = Holder(topology, "logic.a", sole)
    standby = Holder(topology, "logic.b", sole)
    conns: list[aio_pika.abc.AbstractConnection] = []

    async def connect() -> aio_pika.abc.AbstractConnection:
        conns.append(await aio_pika.connect(settings.amqp_url))
        return conns[-1]

    try:
        await placing.hold(await connect())
        assert not await standby.take(await connect())  # it waits as a standby
        for c in conns:  # the broker restarts: both connections lost
            await c.close()
        asking = asyncio.ensure_future(standby.hold(await connect()))  # back first
        await asyncio.sleep(1.0)
        assert await placing.take(await connect()), "the standby took the queue first"
        assert not placing.sole_lost.is_set()
        await asyncio.sleep(5.0)
        assert not asking.done()  # still waiting, as a standby, on its new connection
        assert any("waits 5s on its new connection" in r.getMessage() for r in caplog.records)
        asking.cancel()
    finally:
        for c in conns:
            await c.close()


@pytest.mark.asyncio
async def test_a_standby_gives_way_on_the_link_that_comes_not_while_the_broker_is_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a link (its connection reconnecting while the broker is still away) a
    standby does not wait: it waited there once, and then asked at once when the broker
    came back, more than STANDBY_YIELD_S later (the review's reading). It gives way once
    per new link, before the attempt that finds that link, however it came."""
    from types import SimpleNamespace

    from crdt_ops.transport.amqp import holder as holder_module

    monkeypatch.setattr(holder_module, "STANDBY_YIELD_S", 0.3)
    standby = Holder(Topology("g"), "logic.b", "crdt.g.logic.held")
    attempts: list[tuple[object, float]] = []
    links = [None, None, object()]  # the broker away twice, then back: a new link
    conn = SimpleNamespace(transport=None)

    async def take(c: object) -> bool:
        attempts.append((links[0], time.monotonic()))
        if links[0] is None:
            links.pop(0)
            conn.transport = None if links[0] is None else SimpleNamespace(connection=links[0])
            return False
        return True

    monkeypatch.setattr(standby, "take", take)
    standby._standby_on = object()  # refused on an earlier link
    began = time.monotonic()
    await standby.hold(conn)  # type: ignore[arg-type]
    assert [link for link, _ in attempts] == [None, None, links[0]]
    assert attempts[1][1] - began < 0.3  # no wait without a link
    assert attempts[2][1] - attempts[1][1] >= 0.3  # the wait, on the link that came
    await standby.hold(conn)  # type: ignore[arg-type]  # the same link: no second wait
    assert attempts[3][1] - attempts[2][1] < 0.2
