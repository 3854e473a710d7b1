"""A message the broker delivered, as the transport reads it: its body, the properties the
transport uses, and its acknowledgement.

aio-pika wraps each delivery in an :class:`aio_pika.IncomingMessage`, which copies its
properties one locked attribute at a time: 30 µs a message on a 2-vCPU VM, where
reading the same fields from aiormq's :class:`~aiormq.abc.DeliveredMessage` takes 0.3 µs
(BENCHMARKS.md, "Where a Start's time goes when the broker is taken off its path"). A
replica's consumer of its queue or of the group's stream
(:mod:`~crdt_ops.transport.amqp.consumer`) and its replays of the stream
(:func:`~crdt_ops.transport.amqp.recovery.read_stream`) consume through aiormq and hand
on a :class:`Delivery`; what aio-pika delivers (the founding and deletion readers) is
:class:`Delivered` as it is. Both are what :class:`~crdt_ops.transport.amqp.inbound.Inbound`
takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import aiormq.abc
from aiormq.abc import DeliveredMessage


class Delivered(Protocol):
    """What the transport reads of a delivered message: an :class:`aio_pika.IncomingMessage`
    or a :class:`Delivery`."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def app_id(self) -> str | None: ...

    @property
    def channel(self) -> aiormq.abc.AbstractChannel: ...

    def ack(self, multiple: bool = False) -> Awaitable[None]: ...

    def nack(self, multiple: bool = False, requeue: bool = True) -> Awaitable[None]: ...


class Delivery:
    """One message delivered on an aiormq channel (``delivered``), read once: ``body``,
    ``headers`` (empty if it has none; a stream's message carries its offset in
    ``x-stream-offset``), ``message_id``, ``user_id`` (set by the broker's validated
    user-id: RabbitMQ, "Validated User-ID"), ``app_id``, its ``channel`` and
    ``delivery_tag``. :meth:`ack` and :meth:`nack` answer it on that channel; they raise
    what aiormq raises when the channel is closed (the broker then delivers it again to
    a queue's next consumer; a stream is read again from an offset)."""

    __slots__ = ("app_id", "body", "channel", "delivery_tag", "headers", "message_id",
                 "user_id")

    def __init__(self, delivered: DeliveredMessage) -> None:
        props = delivered.header.properties
        self.body: bytes = delivered.body
        self.headers: Mapping[str, Any] = props.headers or {}
        self.message_id: str | None = props.message_id
        self.user_id: str | None = props.user_id
        self.app_id: str | None = props.app_id
        self.channel: aiormq.abc.AbstractChannel = delivered.channel
        self.delivery_tag: int = getattr(delivered.delivery, "delivery_tag", 0)

    async def ack(self, multiple: bool = False) -> None:
        """Acknowledge this message (``multiple``: and every earlier one of its channel not
        acknowledged yet: AMQP 0-9-1, ``basic.ack``)."""
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        """Reject this message (``multiple``: and every earlier one not answered yet), for
        the broker to deliver again if ``requeue`` (RabbitMQ, "Negative
        Acknowledgements")."""
        await self.channel.basic_nack(self.delivery_tag, multiple=multiple, requeue=requeue)


__all__ = ["Delivered", "Delivery"]
