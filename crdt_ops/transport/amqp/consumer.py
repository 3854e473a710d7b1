"""A replica's consumer of a queue or of the group's stream, made through aiormq on the
current AMQP channel of an aio-pika channel, and made again by the node when it is gone.

aio-pika's queue consumer wraps every delivery in an ``IncomingMessage`` and runs its
callback in a task of its own; :class:`Consumer` hands aiormq's delivery on as a
:class:`~crdt_ops.transport.amqp.delivery.Delivery` from aiormq's task, one turn of the
event loop and some 0.1-0.2 ms of a loaded worker's CPU sooner (BENCHMARKS.md, "The
publishing path"). The price is what aio-pika's robust queue did: consuming again after a
reconnection. A consumer is gone when its channel closes (a channel error, a lost
connection) or when the broker cancels it (its queue or stream was deleted: RabbitMQ's
"Consumer Cancel Notification"); it then calls ``lost``, and the node declares the
topology again and calls :meth:`Consumer.consume` (:mod:`~crdt_ops.transport.amqp.node`).
:class:`~crdt_ops.transport.amqp.stream_consumer.StreamConsumer` is one that reads the
group's stream from an offset.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from crdt_ops.transport.amqp.delivery import Delivered, Delivery

log = logging.getLogger(__name__)


class Consumer:
    """One replica's consumer of ``source`` (a queue's or a stream's name): each delivery
    is handed to ``deliver`` (a :class:`~crdt_ops.transport.amqp.delivery.Delivery`; the
    caller acks it once logged). ``lost(deleted)`` is called when the consumer is gone
    without :meth:`cancel`: its channel closed, or (``deleted``) the broker cancelled it.
    The caller declares the topology again and calls :meth:`consume`."""

    def __init__(self, source: str, deliver: Callable[[Delivered], object], replica_id: str,
                 lost: Callable[[bool], None] = lambda deleted: None) -> None:
        self.source, self.deliver = source, deliver
        self.replica_id, self.lost = replica_id, lost
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        #: consumers made since this process started (:meth:`consume`)
        self.consumes = 0

    def _arguments(self) -> dict[str, Any] | None:
        """The ``basic.consume`` arguments of the next consumer (none for a queue)."""
        return None

    def _where(self) -> str:
        """Where the next consumer starts, for the log line ("" for a queue)."""
        return ""

    async def consume(self, channel: AbstractChannel) -> None:
        """(Re)start consuming on ``channel`` (its current AMQP channel; its prefetch set),
        cancelling the consumer before if it still runs. Raises what aiormq raises when
        the channel fails (the caller tries again)."""
        await self.cancel()
        underlay = await channel.get_underlay_channel()
        if underlay.is_closed:  # not reopened yet after a reconnection
            raise aiormq.exceptions.ChannelInvalidStateError(f"{underlay!r} is closed")
        arguments = self._arguments()
        # the tag is ours before the first delivery can come (which is checked against it)
        tag = f"{self.replica_id[:160]}.{uuid.uuid4().hex[:12]}"
        self._channel, self._tag = underlay, tag
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
        underlay.closing.add_done_callback(
            lambda _: self._gone(underlay, "its channel closed", deleted=False))
        await underlay.basic_consume(self.source, self._on_delivery, no_ack=False,
                                     arguments=arguments, consumer_tag=tag)
        self.consumes += 1
        log.info("replica %s consuming %s%s", self.replica_id, self.source, self._where())

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
        """Stop the consumer (what it delivered and is not acked comes again: requeued by
        the broker, or read again from the stream's offset stored)."""
        channel, tag, self._channel, self._tag = self._channel, self._tag, None, None
        self._stopped()
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)

    def _stopped(self) -> None:
        """The consumer stopped (cancelled, or gone)."""

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag == self._tag:
            self._gone(self._channel, f"the broker cancelled it ({self.source} was deleted?)",
                       deleted=True)

    def _gone(self, channel: aiormq.abc.AbstractChannel | None, why: str,
              deleted: bool) -> None:
        """The consumer on ``channel`` is gone (``why``), unless it was replaced already."""
        if channel is None or channel is not self._channel:
            return
        self._tag = self._channel = None
        self._stopped()
        log.info("replica %s: its consumer of %s is gone: %s", self.replica_id, self.source,
                 why)
        self.lost(deleted)

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        if getattr(delivered.delivery, "consumer_tag", None) != self._tag:
            return  # a consumer cancelled since: its deliveries come again to the new one
        msg = Delivery(delivered)
        self._received(msg)
        self.deliver(msg)

    def _received(self, msg: Delivered) -> None:
        """A delivery came, before it is handed on."""


__all__ = ["Consumer"]
