"""Applying what the group delivers: authenticate, apply, log, then acknowledge.

A delivered batch is applied, then, up to :data:`LINGER_S` later (the reactions to it
write meanwhile, and what arrives meanwhile is applied and joins it, into the same
transaction), logged in the store before it is acknowledged
(:meth:`~crdt_ops.transport.durable.DurableReplica.log_delivered`), so a crash at any
instant neither loses nor doubles it. A message that is not valid is published to
the dead-letter exchange with its reason in the ``x-crdt-reason`` header, then
acknowledged; one the causal buffer cannot hold is dead-lettered the same way and read
again from the stream later (:mod:`~crdt_ops.transport.amqp.recovery`). A replica that
reads the group's stream instead of a queue of its own
(:mod:`~crdt_ops.transport.amqp.stream_consumer`) logs the offset it read up to in the
same transaction, and what must come again is read again from there, not requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange

from crdt_ops.errors import BufferFull, InvalidMessage, WaitingCapReached
from crdt_ops.transport import metrics
from crdt_ops.transport.amqp.arrivals import arriving
from crdt_ops.transport.amqp.delivery import Delivered
from crdt_ops.transport.amqp.recovery import REREAD_DUE
from crdt_ops.transport.amqp.stream_consumer import STREAM_OFFSET, offset_mark
from crdt_ops.transport.auth import Authenticator
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.echo import EchoWatch

log = logging.getLogger(__name__)

#: Turns of the event loop a delivered batch waits between being applied and being logged:
#: a service that reacts to a change by writing (logic placing a container, a worker
#: reporting it on) gets there within them, and its operations share the batch's
#: transaction (one disk sync, not two). Each costs a few microseconds when nothing runs.
REACTION_TURNS = 4
#: Seconds a batch that brought something new waits, after its reactions, for more
#: deliveries to log in the same transaction before it is acknowledged (or until it holds
#: ``prefetch`` deliveries). Nothing waits on it but the broker's ack: a delivery is
#: applied, and its reactions run, as it arrives; a sender's next messages do not wait
#: for this one's confirm either (the publisher keeps several rounds in flight,
#: :data:`~crdt_ops.transport.amqp.publisher.ROUNDS_IN_FLIGHT`). It turns one
#: transaction per delivery into one per batch, under load and for a replica that hears a
#: few messages a second (a worker of a cell): each transaction, and each ack, costs CPU
#: (BENCHMARKS.md, "The floor under a worker's delivery").
LINGER_S = 0.100
#: Seconds a nack may take before it is given up (the channel is failing: the broker
#: requeues the message when it closes).
NACK_TIMEOUT_S = 5.0


class Inbound:
    """Applies deliveries to ``durable``: those our consumer (of our queue, or of the
    group's stream) hands to :attr:`inbox` (``inbox.put_nowait``) and stream reads handed
    to :meth:`apply`.
    ``auth`` finds who sent a message; ``echo`` hears our own messages come back;
    ``observed`` is called after each batch, ``arrived`` as each one arrives (the node's
    :meth:`LoopLag.busy <crdt_ops.transport.loop_lag.LoopLag.busy>`).
    :attr:`dead_letter_exchange` is set by the node once connected; :attr:`dead_lettered`
    counts dead letters the broker confirmed. ``rewind``: set when :attr:`inbox` is fed
    from the group's stream (``consume="stream"``), called instead of a nack when what
    was delivered must come again (read again from the offset stored)."""

    def __init__(self, durable: DurableReplica, settings: Settings, auth: Authenticator,
                 echo: EchoWatch, observed: Callable[[], None],
                 arrived: Callable[[], None] = lambda: None,
                 rewind: Callable[[], None] | None = None) -> None:
        self.durable, self.settings, self.auth, self.echo = durable, settings, auth, echo
        self.replica_id = durable.replica_id
        self.observed = observed
        self.arrived = arrived
        self.rewind = rewind
        self.inbox: asyncio.Queue[Delivered] = asyncio.Queue()
        self.dead_letter_exchange: AbstractExchange | None = None
        self.dead_lettered = 0
        # this replica's series, looked up once (a lookup per batch was 3 % of its CPU)
        self._applied = metrics.OPS_APPLIED.labels(self.replica_id, self.settings.group)
        self._duplicates = metrics.DUPLICATES.labels(self.replica_id, self.settings.group)
        self._batch_size = metrics.BATCH_SIZE.labels(self.replica_id, self.settings.group)

    async def run(self) -> None:
        """Apply one batch of what our queue delivered (up to ``prefetch`` messages)."""
        batch = [await self.inbox.get()]
        while len(batch) < self.settings.prefetch and not self.inbox.empty():
            batch.append(self.inbox.get_nowait())
        try:
            await self.apply(batch)
        except asyncio.CancelledError:
            # stopping: the broker requeues what was not acked when our channel closes
            # (RabbitMQ, "Consumer Acknowledgements": automatic requeueing); waiting here
            # for nacks on a closing channel could hold the stop up for ever
            raise
        except BaseException:
            await self._again(batch)  # what was logged comes again, dropped as a duplicate
            raise

    async def _again(self, batch: list[Delivered]) -> None:
        """Have the broker deliver ``batch`` again: a nack through a queue; from the
        stream, a new consumer from the offset stored (:attr:`rewind`)."""
        if self.rewind is not None:
            self.rewind()
        else:
            await _requeue(batch)

    async def apply(self, batch: list[Delivered], stream: bool = False,
                     reread: bool = False) -> None:
        """Apply, log, then ack a batch of deliveries. A message the buffer cannot
        hold is dead-lettered (never requeued) and read again by the gap watch; only
        a message whose dead letter the broker did not confirm is requeued, and from
        the stream nothing is (a nack there would close the connection). ``stream``:
        they come from the stream; ``reread``: a re-read by the gap watch, where
        what cannot be applied is skipped without dead-lettering it again."""
        self.arrived()
        await self.durable.store_ok.wait()
        replica = self.durable.replica
        before = replica.stats["applied"] - replica.stats["local"]
        dups = replica.stats["duplicates"]
        held = self.durable.hold([])
        valid: list[bytes] = []
        dead: list[tuple[Delivered, str, str]] = []
        dropped = False
        more: list[Delivered] = batch
        deadline: float | None = None  # set after the first reactions ran
        while more:
            v, d, drop = self._take(more, stream, reread)
            # their offset in the stream, if read from there, is logged with them by
            # whichever write comes first (this batch's, or a heartbeat's or a reaction's)
            self.durable.hold(v, offset_mark(more, lambda: stored_offset(self.durable)))
            valid, dead, dropped = valid + v, dead + d, dropped or drop
            if stream or not valid:
                break
            # let the reactions to them run (a subscriber woken by a change event writes):
            # their operations are logged with the deliveries, in one disk sync
            for _ in range(REACTION_TURNS if v else 0):
                await asyncio.sleep(0)
            # and what arrives meanwhile joins the same transaction: one transaction serves
            # several deliveries (only their acks wait; they are applied as they arrive)
            if deadline is None:
                deadline = time.monotonic() + LINGER_S
            more = await arriving(self.inbox, self.settings.prefetch - len(batch), deadline)
            batch += more  # the caller nacks them too if logging fails
        # on failure nacked by the caller: they come again, and are applied anew once
        # memory is restored from the store; what a re-read could not hold needs another
        if not self.durable.log_delivered(held, {REREAD_DUE: b"1"} if dropped else None):
            log.info("replica %s: the store failed and recovered while %d deliveries awaited "
                     "their log; they come again", self.replica_id, len(batch))
            if not stream:  # a stream read is read again instead
                await self._again(batch)
            return
        # confirmed together: one round trip for the lot, not one per message
        outcomes = await asyncio.gather(
            *(self._dead_letter(m, reason, detail) for m, reason, detail in dead),
            return_exceptions=True)
        unsent = {id(m) for (m, _, _), out in zip(dead, outcomes, strict=True)
                  if isinstance(out, BaseException)}
        try:
            if unsent and not stream and self.rewind is None:
                # only the messages whose dead letter was not confirmed come again; never
                # ack(multiple=True) across a nacked tag (the broker closes the channel)
                log.error("%d dead letters not confirmed; those messages are requeued",
                          len(unsent))
                for msg in batch:
                    await (msg.nack(requeue=True) if id(msg) in unsent else msg.ack())
            else:
                if unsent:  # read past (the offset is logged): the stream still holds them
                    log.error("%d dead letters not confirmed; those messages are skipped (the "
                              "group's stream still holds them)", len(unsent))
                await ack_all(batch)
        except Exception as e:  # channel gone: they come again and are dropped as duplicates
            # (INFO for a channel closed under it: the lost connection has a line of its own)
            closed = isinstance(e, (aiormq.exceptions.ChannelInvalidStateError,
                                    aiormq.exceptions.ConnectionClosed, ConnectionError))
            log.log(logging.INFO if closed else logging.WARNING,
                    "ack failed (%s); the broker will redeliver", e)
        applied = replica.stats["applied"] - replica.stats["local"] - before
        self._applied.inc(applied)
        self._duplicates.inc(replica.stats["duplicates"] - dups)
        self._batch_size.observe(len(batch))
        self.durable.applied(applied)  # acked already: a failed snapshot is for the recovery
        self.observed()

    def _take(self, msgs: list[Delivered], stream: bool, reread: bool
              ) -> tuple[list[bytes], list[tuple[Delivered, str, str]], bool]:
        """Apply ``msgs`` to the replica: returns the bodies that brought something new (to
        log), the messages to dead-letter with their reason and detail, and whether one was
        dropped over the causal buffer's caps (the stream must be read again)."""
        replica = self.durable.replica
        valid: list[bytes] = []
        dead: list[tuple[Delivered, str, str]] = []
        dropped = False
        if not stream:  # through our queue: the path from the exchange to us works
            self.echo.received([msg.message_id or "" for msg in msgs], time.monotonic())
        for msg in msgs:
            try:
                # a duplicate (an echo of our own) needs no log
                if replica.receive(msg.body, self.auth.sender(msg.body, msg.headers,
                                                              msg.user_id)):
                    valid.append(msg.body)
            except InvalidMessage as e:
                if not reread:
                    dead.append((msg, e.reason, e.detail))
            except BufferFull as e:
                # never requeued (it would come back at once, and a sender whose gap never
                # fills would stall the consumer): dropped here, and read again from the
                # stream by the gap watch
                dropped = True
                if not reread:
                    reason = "gap-cap" if isinstance(e, WaitingCapReached) else "buffer-full"
                    dead.append((msg, reason, str(e)))
        return valid, dead, dropped

    async def _dead_letter(self, msg: Delivered, reason: str, detail: str) -> None:
        """Publish ``msg`` to the dead-letter exchange with the reason in its headers;
        counted once the broker confirmed it (raises if it did not)."""
        assert self.dead_letter_exchange is not None
        log.warning("dead-lettering a message (%s: %s) from %s", reason, detail[:500],
                    msg.user_id or msg.app_id or "?")
        headers = dict(msg.headers)
        headers.update({"x-crdt-reason": reason, "x-crdt-detail": detail[:500],
                        "x-crdt-replica": self.replica_id})
        try:
            await self.dead_letter_exchange.publish(
                aio_pika.Message(msg.body, headers=headers,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="", timeout=30)
        except Exception as e:
            log.error("could not dead-letter a message (%s); it will be requeued", e)
            raise
        self.dead_lettered += 1
        metrics.DEAD_LETTERED.labels(self.replica_id, self.settings.group, reason).inc()


def stored_offset(durable: DurableReplica) -> int | None:
    """The offset in the group's stream of the last message ``durable`` logged (None: none,
    or forgotten: the stream was declared anew)."""
    return durable.mark(STREAM_OFFSET)


async def ack_all(batch: list[Delivered]) -> None:
    """Acknowledge ``batch``: its last message on each AMQP channel, with ``multiple``
    (one frame per channel: a batch that spans a reconnection holds messages of a channel
    gone, whose ack fails, and of the new one, whose ack must still go)."""
    last: dict[int, Delivered] = {}
    for msg in batch:
        last[id(msg.channel)] = msg
    failed: Exception | None = None
    for msg in last.values():
        try:
            await msg.ack(multiple=True)
        except Exception as e:
            failed = e
    if failed is not None:
        raise failed


async def _requeue(msgs: list[Delivered]) -> None:
    """Nack ``msgs`` for the broker to deliver them again; a nack that fails or takes over
    :data:`NACK_TIMEOUT_S` is given up (the channel is failing: the broker requeues the
    message when it closes)."""
    for msg in msgs:
        with contextlib.suppress(Exception):  # TimeoutError included
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation of a stop that comes as the nack completes (CPython gh-86296)
            async with asyncio.timeout(NACK_TIMEOUT_S):
                await msg.nack(requeue=True)
