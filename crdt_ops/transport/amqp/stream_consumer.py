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
current AMQP channel (:mod:`~crdt_ops.transport.amqp.consumer`, as a queue's is) and made
again, from the stored offset, by :meth:`StreamConsumer.consume`.

What a queue of its own gave that the stream does not: messages kept for a replica down
for longer than the stream's retention (``--stream-max-age``, ``--stream-max-bytes``).
Such a replica reads on from the oldest message left, and :meth:`StreamConsumer.check`
logs what it missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from crdt_ops.transport.amqp.consumer import Consumer
from crdt_ops.transport.amqp.delivery import Delivered

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


class StreamConsumer(Consumer):
    """One replica's consumer of the group's stream ``stream``
    (:class:`~crdt_ops.transport.amqp.consumer.Consumer`), from the offset after the one
    ``stored`` returns (the offset logged last; None: nothing logged yet, read from the
    first message). ``lost(deleted)``: ``deleted`` when the broker cancelled it because
    the stream was deleted: a stream declared again numbers its messages from 0, so the
    offset stored means nothing in it."""

    def __init__(self, stream: str, deliver: Callable[[Delivered], object],
                 stored: Callable[[], int | None], replica_id: str,
                 lost: Callable[[bool], None] = lambda deleted: None) -> None:
        super().__init__(stream, deliver, replica_id, lost)
        self.stored = stored
        #: the offset the current consumer started from (None: not consuming)
        self.started_at: int | None = None
        self._first_seen = False

    def _arguments(self) -> dict[str, Any]:
        stored = self.stored()
        self.started_at = 0 if stored is None else stored + 1
        self._first_seen = False
        return {"x-stream-offset": self.started_at}

    def _where(self) -> str:
        return f" from offset {self.started_at}"

    def _stopped(self) -> None:
        self.started_at = None

    def _received(self, msg: Delivered) -> None:
        if not self._first_seen:
            self._first_seen = True
            self.check(offset_of(msg))

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
                      self.source, first, self.started_at, first - self.started_at)


__all__ = ["STREAM_OFFSET", "StreamConsumer", "offset_mark", "offset_of"]
