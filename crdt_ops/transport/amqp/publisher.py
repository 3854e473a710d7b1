"""Publishing a durable replica's outbox to the group until the broker confirmed it.

The outbox (:mod:`crdt_ops.transport.durable`) holds every accepted operation until the
broker confirms it; a failure (broker down, channel closed) raises and the next round
publishes again what is unconfirmed (a duplicate is dropped by every replica's clock).
A message the broker returns as unroutable (``mandatory``: it reached no queue, not even
the stream) means the topology was deleted: it is declared again and the message
published again. A message the broker refuses (basic.nack: a member queue at a length
limit with ``x-overflow: reject-publish``) goes straight into the stream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustChannel,
)

from crdt_ops.transport import metrics
from crdt_ops.transport.amqp.stream_ready import StreamGate
from crdt_ops.transport.auth import properties
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import MAX_STORE_RETRY_S, DurableReplica
from crdt_ops.transport.echo import EchoWatch
from crdt_ops.transport.signing import Signer
from crdt_ops.transport.topology import Topology
from crdt_ops.wire import codec

log = logging.getLogger(__name__)

#: Rounds of publishing (each awaiting the broker's confirms of its messages) at most in
#: flight at once. A message written while the last round awaits its confirms waits for
#: them only while that round is younger than ``batch_delay_ms`` (what is written meanwhile
#: then goes out joined: one message, not one per row); after that it goes out at once,
#: so that a slow confirm (RabbitMQ confirms a persistent message once its queues wrote it
#: to disk, or once their consumers acknowledged it) holds no later write back.
ROUNDS_IN_FLIGHT = 4
#: Seconds a round waits, after a reconnection, for aio-pika to reopen the channel it
#: publishes on.
REOPEN_WAIT_S = 5.0
#: In a group with sub-groups, one plain heartbeat (a clock report) in this many goes to
#: every member; the others reach the replicas that hold every sub-group (logic and web,
#: the stream) and the sender, not the replicas that hold one sub-group: those learn the
#: others' clocks this much later (their gap detection and causal stability lag by that
#: much), and receive that many times fewer messages while the group is idle.
HEARTBEAT_TO_ALL_EVERY = 5


class Publisher:
    """Publishes ``durable``'s outbox through ``channel`` (publisher confirms, returns
    raised) of ``connection`` to ``exchange``, all three set by the node once connected.
    ``redeclare``: declare the topology again (awaited after returned messages);
    ``topology_lost``: the exchange is gone (the node declares the topology again and
    re-reads the stream); ``gate``: publishes go out only on a connection on which the
    group's stream took a probe (:mod:`~crdt_ops.transport.amqp.stream_ready`): its
    ``ready`` is awaited before each round, and a message that would go out on a
    connection made since is not published (its round fails, and goes again).

    ``published`` and ``refused``: messages the broker confirmed, and refused, since this
    process started; ``confirmed_through``: see :meth:`AmqpNode.confirmed_through
    <crdt_ops.transport.amqp.node.AmqpNode.confirmed_through>`."""

    def __init__(self, durable: DurableReplica, settings: Settings, topology: Topology,
                 echo: EchoWatch, signer: Signer | None,
                 redeclare: Callable[[], Awaitable[None]],
                 topology_lost: Callable[[], None],
                 gate: StreamGate) -> None:
        self.durable, self.settings, self.topology = durable, settings, topology
        self.replica_id = durable.replica_id
        self.echo, self.signer = echo, signer
        self.redeclare, self.topology_lost = redeclare, topology_lost
        self.gate = gate
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self.published = 0
        self._plain_heartbeats = 0  # plain heartbeats routed so far (see _routing_key)
        self._flight: set[int] = set()  # outbox ids a round publishes now
        #: the store's ``rewinds`` when a look last found no unconfirmed row below those in
        #: flight (-1: a round ended with rows unconfirmed, which may lie below a later
        #: round's)
        self._rewound = 0
        #: rounds awaiting their confirms, with when each read the outbox
        self._rounds: dict[asyncio.Task[None], float] = {}
        self._failed: BaseException | None = None  # a round's failure, for run() to raise
        self.refused = 0
        self.confirmed_through = 0.0
        #: outbox rows not confirmed yet, as the last round found them
        self.unconfirmed = 0
        #: when the broker last confirmed a message (``time.monotonic()`` seconds; 0.0: never)
        self.confirmed_at = 0.0
        #: the same instant by the wall clock (``time.time()`` seconds; 0.0: never): the
        #: monotonic clock stops while the machine is suspended, so the two cannot be
        #: converted into each other afterwards
        self.confirmed_wall = 0.0
        self._refusal_backoff = 0.05  # seconds before the next round after refusals
        self._refusal_said = 0.0
        self._unroutable_said = 0.0

    async def run(self) -> None:
        """Start publishing what the outbox holds that is not in flight yet, oldest first,
        as one *round* (:meth:`_round`, a task that awaits the broker's confirms), and
        return: the next outbox rows go out while earlier rounds still await their
        confirms, once the last round is ``batch_delay_ms`` old (at most
        :data:`ROUNDS_IN_FLIGHT` rounds; what was written meanwhile goes out together,
        joined). A round that failed (broker down, channel closed) raises here, on the
        next call: what it did not get confirmed is published again by a later round
        (duplicates are harmless). After a (re)connection nothing goes out before the
        stream was found to take writes (``gate``); the probe waits until there is
        something to publish.

        A message the broker *nacks* was refused by a queue bound to the exchange (a
        length limit with ``x-overflow: reject-publish``, RabbitMQ's "Queue Length
        Limit" guide) and enqueued by every other one: it is not published to the
        exchange again (that would multiply the traffic, and hold back what follows
        behind one full queue) but straight into the stream, where the replica behind
        the refusing queue finds it (a gap its peers' heartbeats reveal); see
        :meth:`_refused`."""
        ready = self.durable.outbox_ready
        await ready.wait()
        ready.clear()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            ready.set()  # what it left unconfirmed goes again after the pause
            raise failed
        if self._rounds:
            # the last round started less than batch_delay_ms ago: its confirm is likely
            # near, and what waits for it goes out joined (under load, fewer and bigger
            # messages); past that, or with a round's confirm slow, this one goes at once
            patience = self.settings.batch_delay_ms / 1000
            wait = patience - (time.monotonic() - max(self._rounds.values()))
            full = len(self._rounds) >= ROUNDS_IN_FLIGHT
            if full or wait > 0:
                ready.set()  # look again once a round ended, or the patience is over
                await asyncio.wait(self._rounds, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=None if full else wait)
                return
        limit = max(self.settings.prefetch, 100)
        asked = time.monotonic()
        store = self.durable.store
        if self._flight and self._rewound != store.rewinds:
            # rows below those in flight may be unconfirmed again (sent again on a peer's
            # request, or left by a round that failed while a later one flies): looked for
            # among all, those in flight left out, until a look finds none below them
            flying = max(self._flight)
            rows = store.unconfirmed(limit=limit, skip=self._flight)
            if not rows or rows[0][0] > flying:
                self._rewound = store.rewinds
        else:  # (after the ids in flight: none of them is fetched again)
            self._rewound = store.rewinds
            rows = store.unconfirmed(limit=limit, after=max(self._flight, default=0))
        self._outbox(len(rows) + len(self._flight), asked)
        if not rows:
            if not self._flight:
                self.confirmed_through = asked
            return
        if len(rows) >= limit:  # a backlog: its next rows go in the next round at once
            ready.set()
        # something to publish: the stream must take writes first (at once but after a
        # (re)connection; a replica with nothing to send does not probe)
        try:
            await self.gate.ready()
            await self._channel_reopened()
        except BaseException:
            ready.set()  # nothing was taken in flight: they go on a later call
            raise
        # every row the outbox held at ``asked`` has an id up to this one (if it held them
        # all): confirmed_through may move to ``asked`` once they are all confirmed
        through = rows[-1][0] if len(rows) < limit else None
        self._flight.update(i for i, _ in rows)
        task = asyncio.get_running_loop().create_task(self._round(rows, asked, through))
        self._rounds[task] = asked
        task.add_done_callback(self._round_ended)

    async def _channel_reopened(self) -> None:
        """Return once the channel to publish on is open: after a reconnection aio-pika
        reopens it after the connection (RobustChannel), which the stream's probe, on a
        channel of its own, may precede; waits :data:`REOPEN_WAIT_S` at most (then the
        round fails, and is tried again after a pause)."""
        channel = self.channel
        if isinstance(channel, AbstractRobustChannel) and channel.is_closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REOPEN_WAIT_S):
                    await channel.ready()

    def _round_ended(self, task: asyncio.Task[None]) -> None:
        self._rounds.pop(task, None)

    async def _round(self, rows: list[tuple[int, bytes]], asked: float,
                     through: int | None) -> None:
        """Publish ``rows`` (outbox id, message) and await the broker's confirms; record
        what was confirmed, and a failure for :meth:`run` to raise. Their ids stay in
        flight (not published again) until this ends."""
        ready = self.durable.outbox_ready
        confirmed = False
        try:
            sends = _joined(rows)
            outcomes = await _outcomes([self.publish(body) for _, body in sends])
            done = [i for (ids, _), out in zip(sends, outcomes, strict=True) if out is None
                    for i in ids]
            unroutable = sum(isinstance(out, aio_pika.exceptions.PublishError)
                             for out in outcomes)
            refused = [send for send, out in zip(sends, outcomes, strict=True)
                       if isinstance(out, aio_pika.exceptions.DeliveryError)
                       and not isinstance(out, aio_pika.exceptions.PublishError)]
            if refused:
                done += await self._refused(refused)
            if done:
                self.confirmed_at, self.confirmed_wall = time.monotonic(), time.time()
                self.durable.store.confirm(done)
                self.published += len(done)
                metrics.OPS_PUBLISHED.labels(self.replica_id, self.settings.group).inc(len(done))
            self._confirmed_upto(asked, through)
            failed = [out for out in outcomes if isinstance(out, BaseException)
                      and not isinstance(out, aio_pika.exceptions.DeliveryError)]
            if unroutable and not failed:
                await self._unroutable(unroutable)
                ready.set()  # they go again on the next round
                return
            if failed:
                if any(isinstance(e, aiormq.exceptions.ChannelNotFoundEntity) for e in failed):
                    self.topology_lost()  # the exchange is gone
                self._failed = failed[0]
                ready.set()
                return
            if len(done) < len(rows):  # refused, and the stream did not take them either
                self._refusal_backoff = min(self._refusal_backoff * 2, MAX_STORE_RETRY_S)
                await asyncio.sleep(self._refusal_backoff)  # held in flight meanwhile
                ready.set()
                return
            self._refusal_backoff = 0.05
            confirmed = True
        except Exception as e:  # the store failed (confirm, or the outbox read): for run()
            self._failed = e
            ready.set()
        finally:
            self._flight.difference_update(i for i, _ in rows)
            if not confirmed:  # (some of them go again, maybe below a later round's rows)
                self._rewound = -1

    def _confirmed_upto(self, asked: float, through: int | None) -> None:
        """Move :attr:`confirmed_through` forward, never backwards: to now if no outbox
        row is unconfirmed (every row committed before now was confirmed), else to
        ``asked`` if every row up to id ``through`` (all the outbox held at ``asked``; None:
        unknown) is confirmed, by this round or by others."""
        now = time.monotonic()
        oldest = self.durable.store.unconfirmed(limit=1)
        if not oldest:
            self.confirmed_through = max(self.confirmed_through, now)
            self._outbox(0, now)
        elif through is not None and oldest[0][0] > through:
            self.confirmed_through = max(self.confirmed_through, asked)

    def _outbox(self, rows: int, now: float) -> None:
        """The outbox held ``rows`` unconfirmed rows at ``now``."""
        self.unconfirmed = rows
        durable = self.durable
        if not rows:
            durable.outbox_since = None
        elif durable.outbox_since is None:  # rows of an earlier process
            durable.outbox_since = now
        metrics.OUTBOX.labels(self.replica_id, self.settings.group).set(rows)

    def waiting_s(self, now: float) -> float:
        """Seconds this replica's unconfirmed messages have waited without the broker
        confirming any (``now``: :func:`time.monotonic`): since the oldest was committed, or
        since the last confirm if later; 0.0 when none waits. Under a load, or while a
        backlog drains, it stays near a round's time; it grows while nothing is confirmed:
        the broker blocks publishers (a memory or disk alarm: RabbitMQ's "Memory and Disk
        Alarms" guide), or the connection is down."""
        since = self.durable.outbox_since
        if since is None:
            return 0.0
        return max(0.0, now - max(since, self.confirmed_at))

    async def stop_rounds(self) -> None:
        """Cancel the rounds in flight (the node stops: what they did not get confirmed
        stays in the outbox, and is published again by the next process)."""
        for task in list(self._rounds):
            task.cancel()
        for task in list(self._rounds):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _unroutable(self, n: int) -> None:
        """The broker returned ``n`` of our messages (``mandatory``, basic.return): they
        reached no queue, not even the stream, so the exchange's bindings were deleted
        (it was re-created empty). Declare the whole topology again; the caller
        publishes them again."""
        metrics.PUBLISHES_UNROUTABLE.labels(self.replica_id, self.settings.group).inc(n)
        if time.monotonic() - self._unroutable_said > 60:
            self._unroutable_said = time.monotonic()
            log.warning("replica %s: %d of its messages reached no queue through %s (its "
                        "bindings deleted?); declaring the topology again and publishing "
                        "them again", self.replica_id, n, self.topology.exchange)
        await self.redeclare()

    async def _refused(self, rows: list[tuple[list[int], bytes]]) -> list[int]:
        """Messages the broker nacked (each with the outbox ids it holds): publish each
        straight into the stream (through :attr:`Topology.stream_exchange
        <crdt_ops.transport.topology.Topology.stream_exchange>`, bound to it alone);
        returns the outbox ids the stream confirmed. Says once a minute which member
        queues are fullest (the nack does not name the queue that refused)."""
        assert self.channel is not None
        names, rid = self.topology, self.replica_id
        metrics.PUBLISHES_REFUSED.labels(rid, self.settings.group).inc(len(rows))
        self.refused += len(rows)
        outcomes = await asyncio.gather(*(
            self._send(body, names.stream_exchange, names.stream) for _, body in rows),
            return_exceptions=True)
        kept = [i for (ids, _), out in zip(rows, outcomes, strict=True)
                if not isinstance(out, BaseException) for i in ids]
        if time.monotonic() - self._refusal_said > 60:
            self._refusal_said = time.monotonic()
            log.warning("replica %s: the broker refused %d of its messages to %s (basic.nack: a "
                        "queue bound to it is at a length limit with x-overflow reject-publish?); "
                        "%d went straight into the stream %s instead, for the replica behind "
                        "that queue to read. Fullest member queues: %s", rid, len(rows),
                        names.exchange, sum(not isinstance(out, BaseException) for out in outcomes),
                        names.stream, await self._fullest_queues())
        return kept

    async def _fullest_queues(self, most: int = 3) -> str:
        """The member queues holding most messages, as text (passive declarations)."""
        assert self.connection is not None
        depth: dict[str, int] = {}
        replica = self.durable.replica
        for member in sorted(replica.membership.members() or set(replica.clock)):
            channel = await self.connection.channel()
            with contextlib.suppress(Exception):
                q = await channel.declare_queue(self.topology.queue(member), passive=True)
                depth[q.name] = int(q.declaration_result.message_count or 0)
            with contextlib.suppress(Exception):
                await channel.close()
        top = sorted(depth.items(), key=lambda kv: -kv[1])[:most]
        return ", ".join(f"{name} ({n:,} messages)" for name, n in top) or "none found"

    async def publish(self, body: bytes) -> None:
        """Publish ``body`` to the group's exchange (with sub-groups: the topic one, with
        the routing key of its sub-group) and wait for the broker's confirm
        (raises aio-pika's errors: DeliveryError for a nack, PublishError for a return;
        :class:`~crdt_ops.transport.amqp.stream_ready.StreamUnchecked`, with nothing sent,
        if the connection changed since the gate's last probe: await ``gate.ready()``)."""
        assert self.exchange is not None
        key = self._routing_key(body)
        await self._send(body, self.exchange.name, key)
        if self.topology.reaches_member(key, self.durable.replica.held_subgroup):
            self.echo.confirmed(time.monotonic())  # it comes back through our queue

    def _routing_key(self, body: bytes) -> str:
        """The routing key of ``body`` in a group with sub-groups (else ""): its
        sub-group's; for a plain heartbeat, every :data:`HEARTBEAT_TO_ALL_EVERY`-th the
        common part's (every member), the others to the whole holders only, and back to
        a sender that holds one sub-group through that sub-group's key. An operation of the
        one sub-group its sender holds alone (:meth:`Replica.sole_holder
        <crdt_ops.replica.Replica.sole_holder>`) goes to the whole holders only: not back
        to the sender's own queue, the only other queue bound to that key (which would
        cost the broker a copy and the sender a delivery of what it has; measured:
        BENCHMARKS.md, "A Start step by step")."""
        if not self.topology.routed:
            return ""
        subgroup, plain = codec.route_of(body)
        replica = self.durable.replica
        if plain:
            self._plain_heartbeats += 1
            if self._plain_heartbeats % HEARTBEAT_TO_ALL_EVERY:
                held = replica.held_subgroup
                return self.topology.WHOLE if held is None else self.topology.routing_key(held)
        elif subgroup and subgroup == replica.held_subgroup and replica.sole_holder():
            return self.topology.WHOLE
        return self.topology.routing_key(subgroup)

    async def _send(self, body: bytes, exchange: str, routing_key: str) -> None:
        """Publish ``body`` as a replica's message to ``exchange`` ("": the default one)
        with ``routing_key``, mandatory, on the gate's channel, and await the confirm
        (30 s at most)."""
        assert self.channel is not None
        props = properties(self.settings, body, self.signer,
                           self.echo.message_id(time.monotonic()))
        channel = await self.gate.channel(self.channel)
        await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                    properties=props, mandatory=True, timeout=30)


async def _outcomes(sends: list[Coroutine[Any, Any, None]]) -> list[BaseException | None]:
    """Await ``sends`` concurrently; each one's outcome, in order: None, or what it raised
    (as ``asyncio.gather(..., return_exceptions=True)``). A lone send is awaited in this
    task: no task of its own, so it reaches the socket a turn of the event loop sooner."""
    if len(sends) != 1:
        return await asyncio.gather(*sends, return_exceptions=True)
    try:
        await sends[0]
    except Exception as e:
        return [e]
    return [None]


def _joined(rows: list[tuple[int, bytes]]) -> list[tuple[list[int], bytes]]:
    """The outbox rows ``(id, message)`` as messages to publish, each with the ids it
    holds: consecutive batches joined where causality allows (:func:`crdt_ops.wire.codec.
    coalesce`), so that a backlog (rows written while the last round waited for its
    confirms) costs the broker and every replica one message, not one per row."""
    if len(rows) == 1:
        return [([rows[0][0]], rows[0][1])]
    out, k = [], 0
    for n, body in codec.coalesce([body for _, body in rows]):
        out.append(([i for i, _ in rows[k:k + n]], body))
        k += n
    return out
