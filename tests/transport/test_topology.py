"""The group's topology changed under running replicas (a deleted exchange, a deleted
queue with a backlog): nothing is lost, every replica converges, and the replica
whose path broke says so. Replica processes over the real broker."""

from __future__ import annotations

import asyncio
import signal
import time

import aio_pika

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from tests.broker import ReplicaProcess, converged, delete_group, explain, wait_until
from tests.conftest import Group

FAST = ["--gap-timeout-s", "2"]  # heartbeats every 0.5 s: the echo's patience is 2 s


async def _delete(url: str, exchange: str | None = None, queue: str | None = None,
                  unbind: tuple[str, str] | None = None) -> int:
    """Delete an exchange, a queue, or a queue's binding (``unbind``: queue, exchange);
    returns the messages a deleted queue held."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        if exchange:
            await ch.exchange_delete(exchange)
            return 0
        if unbind:
            q = await ch.declare_queue(unbind[0], passive=True)
            await q.unbind(unbind[1])
            return 0
        assert queue
        ok = await ch.queue_delete(queue)
        return int(ok.message_count)


def delete(url: str, exchange: str | None = None, queue: str | None = None,
           unbind: tuple[str, str] | None = None) -> int:
    return asyncio.run(_delete(url, exchange, queue, unbind))


def _three_writing(group: Group) -> list[ReplicaProcess]:
    """Replicas r0, r1, r2, each to write 600 operations at 60 per s, once all three have
    written 100."""
    procs = [group.replica(f"r{i}", ops=600, seed=i, rate=60, extra=FAST).start()
             for i in range(3)]
    wait_until(lambda: all(p.report().get("issued", 0) >= 100 for p in procs), 60,
               "the replicas to be writing", explain(procs))
    return procs


def test_a_deleted_exchange_heals_and_nothing_is_lost(group: Group) -> None:
    procs = _three_writing(group)
    delete(group.url, exchange=f"crdt.{group.name}")
    wait_until(lambda: converged(procs, {p.replica_id: 600 for p in procs}), 90,
               "every replica to have every operation after the exchange was deleted",
               explain(procs))
    # the deletion took every replica's binding: each declared the topology again, having
    # found the exchange missing (404), its messages returned unroutable, or its echo
    # silent, whichever came first
    assert all("declaring the topology again" in p.tail() for p in procs), explain(procs)()


def test_a_deleted_binding_is_noticed_by_the_missing_echo(group: Group) -> None:
    procs = _three_writing(group)
    # r1's messages still reach the stream and the others' queues: nothing is returned
    # and no publish fails, so only r1's missing echo can tell it that its queue is cut off
    delete(group.url, unbind=(f"crdt.{group.name}.r1", f"crdt.{group.name}"))
    wait_until(lambda: converged(procs, {p.replica_id: 600 for p in procs}), 90,
               "every replica to have every operation after r1's binding was deleted",
               explain(procs))
    assert "came back through its queue" in procs[1].tail(), explain(procs)()
    assert not any("came back through its queue" in p.tail() for p in (procs[0], procs[2])), \
        explain(procs)()


def test_what_the_stream_missed_its_senders_send_again(group: Group) -> None:
    procs = _three_writing(group)
    # the stream and r2's queue cut off from the exchange: r0's and r1's operations reach
    # each other's queues only, and are confirmed (as when the broker lost a stream's
    # newest entries, or routed while a declared-again exchange lacked the stream's binding)
    exchange = f"crdt.{group.name}"
    delete(group.url, unbind=(f"crdt.{group.name}.log", exchange))
    delete(group.url, unbind=(f"crdt.{group.name}.r2", exchange))
    # r2's missing echo declares the topology again; the stream does not hold what r2
    # missed meanwhile, so r2 asks r0 and r1 for it, and they publish it again
    wait_until(lambda: converged(procs, {p.replica_id: 600 for p in procs}), 90,
               "r2 to get what neither its queue nor the stream got", explain(procs))
    assert "asking their senders" in procs[2].tail(), explain(procs)()
    assert any("of them again" in p.tail() for p in procs[:2]), explain(procs)()
    assert sum(p.report()["resent"] for p in procs[:2]) > 0


def test_what_the_stream_missed_of_a_sender_gone_for_good_a_holder_sends_again(
        group: Group) -> None:
    r0, r1, r2 = procs = _three_writing(group)
    r2.signal(signal.SIGSTOP)  # r2 down for a while; the stream and its queue cut off
    exchange = f"crdt.{group.name}"
    try:
        delete(group.url, unbind=(f"crdt.{group.name}.log", exchange))
        delete(group.url, unbind=(f"crdt.{group.name}.r2", exchange))
        at_cut = r1.report()["clock"].get("r0", 0)
        wait_until(lambda: r1.report()["clock"].get("r0", 0) >= at_cut + 60, 30,
                   "r1 to deliver 60 more of r0's operations, which r2 and the stream miss",
                   explain(procs))
        r0.kill()  # gone for good: nobody else can send what the stream missed of r0's...
    finally:
        r2.signal(signal.SIGCONT)
    # ... but r1, which delivered it: r2's missing echo declares the topology again, the
    # stream does not hold what it missed, and r2 asks r0 (for good silent) and r1; r1
    # sends its own again at once, and r0's from its log once r0 did not
    wait_until(lambda: converged([r1, r2], {"r1": 600, "r2": 600}), 90,
               "r2 to get r0's operations that neither its queue nor the stream got",
               explain([r1, r2]))
    assert r2.report()["clock"]["r0"] >= at_cut + 60
    assert "asking their senders" in r2.tail(), explain([r2])()
    assert "which their sender did not send again" in r1.tail(), explain([r1])()
    assert r1.report()["relayed"] > 0 and r2.report()["relayed"] == 0


def test_a_deleted_queue_with_a_backlog_is_refilled_from_the_stream(group: Group) -> None:
    a = group.replica("a", ops=4000, seed=1, per_write=1, extra=FAST).start()
    b = group.replica("b", extra=[*FAST, "--prefetch", "10"]).start()
    procs = [a, b]
    wait_until(lambda: a.report().get("member") and b.report().get("member"), 60,
               "both to be members", explain(procs))
    b.signal(signal.SIGSTOP)  # b's queue fills with a's operations
    try:
        wait_until(lambda: a.report().get("done"), 120, "a to issue 4,000", explain(procs))
        time.sleep(1)
        held = delete(group.url, queue=f"crdt.{group.name}.b")
    finally:
        b.signal(signal.SIGCONT)
    # a backlog beyond what b had prefetched went with the queue (messages: a's publisher
    # joins the batches its outbox holds when it publishes, up to 1,000 operations each)
    assert held > 10, held
    # a writes nothing more: only its heartbeats say how far it is
    wait_until(lambda: converged(procs, {"a": 4000}), 90,
               "b to get the operations its deleted queue held", explain(procs))


async def _stream_end(url: str, stream: str) -> int:
    """The offset of a stream's newest message (read from its last chunk for 1 s: the
    declaration's message count lags behind by the broker's statistics interval)."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=1000)
        q = await ch.declare_queue(stream, passive=True)
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await q.consume(got.put, arguments={"x-stream-offset": "last"})
        end, until = -1, time.monotonic() + 1
        while (left := until - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(got.get(), left)
            except TimeoutError:
                break
            end = max(end, int(msg.headers["x-stream-offset"]))  # type: ignore[call-overload]
            await msg.ack()
        return end


def test_a_queue_that_refuses_messages_holds_back_nobody(group: Group) -> None:
    from tests.broker import rabbitmqctl

    a = group.replica("a", extra=[*FAST, "--more-on-signal", "1000"]).start()
    b, c = (group.replica(r, extra=FAST).start() for r in "bc")
    procs = [a, b, c]
    wait_until(lambda: all(p.report().get("member") for p in procs), 60, "all three members",
               explain(procs))
    b.stop()  # down, and its queue refuses messages beyond 20
    policy, queue = f"refuse-{group.name}", f"crdt.{group.name}.b"
    rabbitmqctl("set_policy", "--apply-to", "queues", policy, rf"^{queue.replace('.', '[.]')}$",
                '{"max-length": 20, "overflow": "reject-publish"}')
    try:
        # the policy reaches the queue (not at once on a loaded machine), and the queue fills
        # up with a's and c's heartbeats (4 a second): then every operation of a's reaches b's
        # queue when it is full. Without the wait, a's 1,000 operations could go out in fewer
        # messages than the queue had room for, and nothing was refused.
        def full() -> bool:
            for line in rabbitmqctl("list_queues", "name", "policy", "messages",
                                    "-q").splitlines():
                name, applied, messages = [*line.split("\t"), "", "", ""][:3]
                if name == queue:
                    return applied == policy and messages.isdigit() and int(messages) >= 20
            return False

        wait_until(full, 60, f"b's queue full under policy {policy}")
        before = asyncio.run(_stream_end(group.url, f"crdt.{group.name}.log"))
        sent = a.report()["published"] + c.report()["published"]
        a.signal(signal.SIGUSR1)  # 1,000 more operations
        # the others are not held back: c has all of them, a's outbox drains
        wait_until(lambda: converged([a, c], {"a": 1000}) and a.report().get("outbox") == 0,
                   60, "a's operations at c while b's queue refuses", explain([a, c]))
        grown = asyncio.run(_stream_end(group.url, f"crdt.{group.name}.log")) - before
        sent = a.report()["published"] + c.report()["published"] - sent
        refused = a.report()["refused"]
        assert refused > 0, "b's queue refused nothing: the test did not test refusals"
        # each message reached the stream once through the exchange and, if refused, once
        # more straight (heartbeats go on while this is measured: a margin of 40);
        # nothing was published round after round
        assert grown <= sent + refused + 40, (grown, sent, refused)
        wait_until(lambda: "refused" in a.tail() and f"crdt.{group.name}.b (" in a.tail(), 30,
                   "a to say which queue refuses", explain([a]))
        b.start()  # its queue holds 20; the rest comes from the stream
        wait_until(lambda: converged(procs, {"a": 1000}), 90, "b to catch up", explain(procs))
    finally:
        rabbitmqctl("clear_policy", policy)


async def _claims(group: Group, ids: list[str]) -> list[bool]:
    """Replicas ``ids`` of a group claim its founding at once, while a reader of the
    founders' stream holds the first claim unacknowledged (what a get-and-requeue of a
    one-message queue did, letting a second claim in); each replica's verdict."""
    settings = [Settings(amqp_url=group.url, group=group.name, replica_id=rid,
                         store=str(group.workdir / f"{rid}.sqlite")) for rid in ids]
    nodes = [AmqpNode(s) for s in settings]
    try:
        for node in nodes:
            await node._connect()  # the topology declared; founding is start()'s next step
        conn = await aio_pika.connect(group.url)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=1)
            stream = await ch.get_queue(Topology(group.name).founders)
            async def hold(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                """Never acknowledged."""

            await stream.consume(hold, no_ack=False, arguments={"x-stream-offset": "first"})
            return list(await asyncio.gather(*(node._claim_founding() for node in nodes)))
    finally:
        for node in nodes:
            await node.stop()


def test_one_group_has_one_founder_however_many_claim_at_once(group: Group) -> None:
    try:
        verdicts = asyncio.run(_claims(group, [f"r{i}" for i in range(8)]))
        assert sum(verdicts) == 1, verdicts
        # and claims made later read the same founder
        assert asyncio.run(_claims(group, ["late1", "late2"])) == [False, False]
    finally:
        delete_group(group.url, group.name, [f"r{i}" for i in range(8)] + ["late1", "late2"])
