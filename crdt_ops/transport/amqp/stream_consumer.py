"""Receiving the group's messages from its stream, on from where this replica left off
(``--consume stream``).

A replica with ``consume="stream"`` has no queue of its own: it reads the group's stream
``crdt.G.log``, which holds everything published to the group, from the offset after
the last one it logged. That offset (:data:`STREAM_OFFSET`) is stored in the same
transaction as the deliveries it covers
(:meth:`~crdt_ops.transport.durable.DurableReplica.log_delivered`), so after a crash, a
reconnection or a store failure the replica reads on from there: nothing is skipped,
and what it reads twice is dropped by its clock. The broker keeps one copy of a message
for the whole group instead of one per member queue (BENCHMARKS.md, "What the broker
spends per message, by topology").

RabbitMQ "Streams" (AMQP 0-9-1 consumers): a stream consumer needs a prefetch
(``basic.qos``) and acknowledgements, which only return credit; ``x-stream-offset``
names where it starts, and every delivery carries its offset in its
``x-stream-offset`` header. aio-pika's robust channel would consume again after a
reconnection from the offset first given; so the consumer is made on the channel's
current AMQP channel and made again, from the stored offset, by :meth:`StreamConsumer.consume`.

What a queue of its own gave that the stream does not: messages kept for a replica down
for longer than the stream's retention (``--stream-max-age``, ``--stream-max-bytes``).
Such a replica reads on from the oldest message left, and :meth:`StreamConsumer.check`
logs what it missed.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from crdt_ops.transport.amqp.delivery import Delivered, Delivery

log = logging.getLogger(__name__)

#: Store key: the offset in the group's stream of the last message logged (decimal ASCII).
STREAM_OFFSET = "stream_offset"


def offset_of(msg: Delivered) -> int | None:
    """The stream offset of a message read from a stream (its ``x-stream-offset``
    header); None for one delivered through a queue."""
    value = msg.headers.get("x-stream-offset")
    return value if isinstance(value, int) else None


def offset_mark(batch: Sequence[Delivered], stored: Callable[[], int | None]
                ) -> dict[str, int] | None:
    """The mark to hold with ``batch``'s deliveries
    (:meth:`~crdt_ops.transport.durable.DurableReplica.hold`: :data:`STREAM_OFFSET` and its
    highest offset) if that is past ``stored()``, the offset logged last (asked only for a
    batch read from a stream: deliveries through a queue carry none); None otherwise (a
    re-read from the start goes back)."""
    top = max((o for o in map(offset_of, batch) if o is not None), default=None)
    if top is None:
        return None
    last = stored()
    if last is not None and top <= last:
        return None
    return {STREAM_OFFSET: top}


class StreamConsumer:
    """One replica's consumer of the group's stream ``stream``: each delivery is handed to
    ``deliver`` (a :class:`~crdt_ops.transport.amqp.delivery.Delivery`; the caller acks it
    once logged);
    ``stored`` returns the offset logged last (None: nothing logged yet, read from the
    first message); ``lost(deleted)`` is called when the consumer is gone without
    :meth:`cancel`: its channel closed (a channel error, a lost connection), or
    ``deleted``, the broker cancelled it (the stream was deleted: a stream declared again
    numbers its messages from 0, so the offset stored means nothing in it). The caller
    declares the topology again and calls :meth:`consume`."""

    def __init__(self, stream: str, deliver: Callable[[Delivered], object],
                 stored: Callable[[], int | None], replica_id: str,
                 lost: Callable[[bool], None] = lambda deleted: None) -> None:
        self.stream, self.deliver, self.stored = stream, deliver, stored
        self.replica_id, self.lost = replica_id, lost
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        #: the offset the current consumer started from (None: not consuming)
        self.started_at: int | None = None
        self._first_seen = False
        #: consumers made since this process started (:meth:`consume`)
        self.consumes = 0

    async def consume(self, channel: AbstractChannel) -> None:
        """(Re)start reading on ``channel`` (its current AMQP channel; its prefetch set) from
        the offset after the one stored, cancelling the consumer before if it still runs.
        Raises what aiormq raises when the channel fails (the caller tries again)."""
        await self.cancel()
        underlay = await channel.get_underlay_channel()
        if underlay.is_closed:  # not reopened yet after a reconnection
            raise aiormq.exceptions.ChannelInvalidStateError(f"{underlay!r} is closed")
        stored = self.stored()
        start = 0 if stored is None else stored + 1
        # the tag is ours before the first delivery can come (which is checked against it)
        tag = f"{self.replica_id[:160]}.{uuid.uuid4().hex[:12]}"
        self._channel, self._tag, self.started_at = underlay, tag, start
        self._first_seen = False
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        underlay.closing.add_done_callback(
            lambda _: self._gone(underlay, "its channel closed", deleted=False))
        await underlay.basic_consume(self.stream, self._on_delivery, no_ack=False,
                                     arguments={"x-stream-offset": start}, consumer_tag=tag)
        self.consumes += 1
        log.info("replica %s consuming %s from offset %d", self.replica_id, self.stream, start)

    async def current(self, channel: AbstractChannel) -> bool:
        """Whether this consumer reads on ``channel``'s AMQP channel as it is now (after a
        reconnection it does not: the broker dropped it with the old one)."""
        try:
            underlay = await channel.get_underlay_channel()
        except Exception:  # not open now
            return False
        return self._tag is not None and underlay is self._channel \
            and not underlay.is_closed

    async def cancel(self) -> None:
        """Stop the consumer (what it delivered and is not logged comes again from the stored
        offset at the next :meth:`consume`)."""
        channel, tag, self._channel, self._tag = self._channel, self._tag, None, None
        self.started_at = None
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag == self._tag:
            self._gone(self._channel, "the broker cancelled it (the stream was deleted?)",
                       deleted=True)

    def _gone(self, channel: aiormq.abc.AbstractChannel | None, why: str,
              deleted: bool) -> None:
        """The consumer on ``channel`` is gone (``why``), unless it was replaced already."""
        if channel is None or channel is not self._channel:
            return
        self._tag = self._channel = self.started_at = None
        log.info("replica %s: its consumer of %s is gone: %s", self.replica_id, self.stream,
                 why)
        self.lost(deleted)

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        if getattr(delivered.delivery, "consumer_tag", None) != self._tag:
            return  # a consumer cancelled since: its deliveries come again from the new one
        msg = Delivery(delivered)
        if not self._first_seen:
            self._first_seen = True
            self.check(offset_of(msg))
        self.deliver(msg)

    def check(self, first: int | None) -> None:
        """The first offset read is ``first``: if it is past where reading started, the
        stream's retention dropped what this replica had not read (it was down for longer
        than the retention): say so. Its operations missing are then a gap the replica
        waits for (health's ``delivery``)."""
        if first is not None and self.started_at is not None and first > self.started_at:
            log.error("replica %s: the stream %s starts at offset %d, after the %d it was to "
                      "read on from: its retention dropped %d messages this replica never "
                      "read; if operations are missing, replace it with a new replica started "
                      "from a peer's snapshot (--bootstrap) and retire it", self.replica_id,
                      self.stream, first, self.started_at, first - self.started_at)


__all__ = ["STREAM_OFFSET", "StreamConsumer", "offset_mark", "offset_of"]
