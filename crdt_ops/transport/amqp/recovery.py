"""Reading the group's stream: to join (replay up to a marker), to fill a gap, and to find a
replica's last operation; and the rule deciding when a gap calls for a re-read.

The stream ``crdt.G.log`` holds everything published to the group (RabbitMQ "Streams",
read from ``x-stream-offset: first``), so what a replica's queue missed (a message dropped
over the causal buffer's caps, a queue deleted with its backlog, a binding missing for a
while) is found there. What it holds twice is dropped by the replica's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage

from crdt_ops.clock import Spans
from crdt_ops.errors import InvalidMessage
from crdt_ops.ops import Batch
from crdt_ops.replica import Replica
from crdt_ops.subgroups import channels_of, split
from crdt_ops.transport.amqp.arrivals import arriving
from crdt_ops.transport.amqp.delivery import Delivered, Delivery
from crdt_ops.transport.amqp.stream_ready import into_stream
from crdt_ops.transport.auth import message
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology
from crdt_ops.wire import codec

log = logging.getLogger(__name__)

#: Store key set (b"1") while messages dropped over the buffer's caps await a stream re-read.
REREAD_DUE = "reread_due"
#: Seconds a stream read waits for more messages to join a batch before applying it: the
#: stream delivers one message at a time at the broker's pace, and each batch costs a
#: transaction with a disk sync (:meth:`~crdt_ops.transport.durable.DurableReplica.log_delivered`).
STREAM_LINGER_S = 0.020
#: A re-read that leaves a gap unfilled doubles the wait before the next, up to this factor.
MAX_GAP_BACKOFF = 32



@dataclass(frozen=True, slots=True)
class GapWatch:
    """When to read the stream again for operations a replica misses (pure: times are
    ``time.monotonic()`` seconds handed in).

    ``backoff``: the patience's factor (1 up to :data:`MAX_GAP_BACKOFF`); ``last_reread``:
    when the stream was last re-read."""

    gap_timeout_s: float
    backoff: int = 1
    last_reread: float = 0.0

    @property
    def patience(self) -> float:
        """Seconds to wait: ``gap_timeout_s`` times the backoff."""
        return self.gap_timeout_s * self.backoff

    def reason(self, now: float, missing: Spans, waiting_since: float | None,
               dropped: bool) -> str | None:
        """Why the stream must be read again now, or None: ``"gap"`` when operations have
        waited (since ``waiting_since``) longer than the patience for ones that never came;
        ``"dropped"`` when messages were dropped over the buffer's caps and the patience
        passed since the last re-read."""
        waited = 0.0 if waiting_since is None else now - waiting_since
        if missing and waited > self.patience:
            return "gap"
        if dropped and now - self.last_reread > self.patience:
            return "dropped"
        return None

    def quiet(self) -> GapWatch:
        """Nothing is missing: the patience is back to ``gap_timeout_s``."""
        return GapWatch(self.gap_timeout_s, 1, self.last_reread)

    def reread(self, now: float, before: Spans, after: Spans) -> tuple[GapWatch, Spans]:
        """A re-read ended at ``now``, with ``before`` and ``after`` missing: the spans
        still missing from senders missing before (stuck: a sender whose gap never fills,
        or not yet published) double the patience, up to :data:`MAX_GAP_BACKOFF` times,
        so such a sender costs one stream read per 32 gap timeouts, not a hot loop."""
        stuck = {r: span for r, span in after.items() if r in before}
        backoff = min(self.backoff * 2, MAX_GAP_BACKOFF) if stuck else self.backoff
        return GapWatch(self.gap_timeout_s, backoff, now), stuck


class Progress:
    """Progress of a long replay on stderr: a bar with percent, rate and time left
    when the total is known (a terminal: redrawn at most once a second; otherwise a
    log line every 10 s)."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what = what
        self.total = total or None
        self.count = 0
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= (1.0 if self.tty else 10.0):
            self.last = now
            self._show(end="\r")

    def done(self) -> None:
        if self.tty:
            self._show(end="\n")
        log.info("%s: %d messages in %.1fs", self.what, self.count,
                 time.monotonic() - self.start)

    def line(self) -> str:
        rate = self.count / max(time.monotonic() - self.start, 1e-9)
        text = f"{self.count:,} messages, {rate:,.0f}/s"
        if self.total:
            frac = min(self.count / self.total, 1.0)
            left = (self.total - self.count) / rate if rate and frac < 1 else 0.0
            bar = "#" * int(frac * 30)
            text = (f"[{bar:<30}] {frac:4.0%} {self.count:,}/{self.total:,} messages, "
                    f"{rate:,.0f}/s, {left:,.0f}s left")
        return f"{self.what}: {text}"

    def _show(self, end: str) -> None:
        if self.tty:
            print(self.line(), end=end, file=sys.stderr, flush=True)
        else:
            log.info("%s", self.line())


#: Seconds a read of the stream from a given offset waits for its first message before it
#: concludes that the offset is past the stream's end: the marker it published lies before
#: it (the stream was declared anew, empty, since the offset was logged).
PAST_END_S = 5.0


class PastTheEnd(Exception):
    """Nothing came from where a read of the stream was to start: an offset past the
    stream's end, or a time after its last message. Its text says where (``_where``)."""


#: Seconds a read of the stream waits for its next message while its marker has not come,
#: before it gives up (:class:`StreamStalled`): the marker was published (and confirmed)
#: once the read began, so the read stalled (a consumer the broker does not serve, as
#: rabbitmq/rabbitmq-server#4133 describes for one that subscribed while the stream was
#: starting). Once in this project's CI a restarted replica's start hung, silent, with a
#: consumer of the stream open: as far as the broker's state showed, at such a read.
READ_STALL_S = 30.0


class StreamStalled(ConnectionError):
    """A read of the stream got nothing for :data:`READ_STALL_S` before its marker came.
    Its caller reads again (a replica's start: from the top, on a new connection)."""


async def read_stream(conn: AbstractConnection, settings: Settings, exchange: AbstractExchange,
                      marker: aio_pika.Message, since: int | datetime.datetime | None = None
                      ) -> AsyncIterator[list[Delivered]]:
    """The group's stream up to ``marker`` (published to ``exchange`` once the read began, so
    everything published before is read), from its start, or from offset ``since``, or
    from the first chunk the broker wrote at time ``since`` or later (RabbitMQ "Streams":
    ``x-stream-offset`` takes either), in batches of at most ``settings.prefetch``
    messages; the caller acks them.
    Shows progress. Raises :class:`PastTheEnd` if from ``since`` nothing at all comes
    within :data:`PAST_END_S` (the marker, the stream's last message, went before it), and
    :class:`StreamStalled` if the read gets nothing for :data:`READ_STALL_S` before the
    marker.

    Read through aiormq, each message a :class:`~crdt_ops.transport.amqp.delivery.Delivery`
    (a replay is bounded by the cost of each delivery: BENCHMARKS.md)."""
    names = Topology.of(settings)
    name = names.stream
    channel = await conn.channel()
    try:
        await channel.set_qos(prefetch_count=settings.prefetch)
        stream = await channel.get_queue(name)  # passive: its message count, for progress
        inbox: asyncio.Queue[Delivered] = asyncio.Queue()

        async def take(delivered: DeliveredMessage) -> None:
            inbox.put_nowait(Delivery(delivered))

        underlay = await channel.get_underlay_channel()
        ok = await underlay.basic_consume(
            name, take, no_ack=False,
            arguments={"x-stream-offset": "first" if since is None else since})
        tail = await _tail(conn, name, marker) if isinstance(since, int) else None
        await into_stream(channel, exchange, name, marker, names.stream_exchange)
        if tail is not None:
            at = await tail
            if at is not None and isinstance(since, int) and at < since:
                raise PastTheEnd(f"{name} took the marker at offset {at}, before offset "
                                 f"{since}")
        # the marker, published once the read began, is read too
        progress = (Progress(f"reading {name}", (stream.declaration_result.message_count or 0) + 1)
                    if since is None else Progress(f"reading {name} from {_where(since)}"))
        while True:
            if since is not None and progress.count == 0:
                first = await arriving(inbox, 1, time.monotonic() + PAST_END_S)
                if not first:
                    raise PastTheEnd(f"nothing in {name} from {_where(since)} on")
                batch = first
            else:
                batch = await arriving(inbox, 1, time.monotonic() + READ_STALL_S)
                if not batch:
                    raise StreamStalled(
                        f"nothing came from {name} for {READ_STALL_S:g}s before the marker "
                        f"{marker.message_id} published {progress.count} messages in; "
                        "reading it again")
            # what comes within STREAM_LINGER_S joins the batch: one transaction for it
            deadline, more = time.monotonic() + STREAM_LINGER_S, batch
            while len(batch) < settings.prefetch \
                    and all(m.message_id != marker.message_id for m in more):
                more = await arriving(inbox, settings.prefetch - len(batch), deadline)
                if not more:
                    break
                batch += more
            end = next((i for i, m in enumerate(batch) if m.message_id == marker.message_id),
                       None)
            yield batch if end is None else batch[: end + 1]
            progress.advance(len(batch) if end is None else end + 1)
            if end is not None:
                break
        progress.done()
        assert ok.consumer_tag is not None
        await underlay.basic_cancel(ok.consumer_tag)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _tail(conn: AbstractConnection, name: str, marker: aio_pika.Message
                ) -> asyncio.Task[int | None]:
    """Watch stream ``name``'s end, on a channel of its own, for ``marker`` (to be published
    next); returns the task that answers the offset the stream took it at, or None if it
    did not come within :data:`PAST_END_S`. A read from an offset past the stream's end (it
    was declared anew, and holds fewer messages since) attaches there and waits: the
    marker lands before it and never comes, and in a group whose replicas write, what
    comes after that offset keeps the read going for good; the marker's offset says so at
    once."""
    channel = await conn.channel()
    seen: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def look(delivered: DeliveredMessage) -> None:
        msg = Delivery(delivered)
        await msg.ack()  # (a stream's consumer acknowledges what it is given)
        offset = msg.headers.get("x-stream-offset")
        if msg.message_id == marker.message_id and not seen.done():
            seen.set_result(offset if isinstance(offset, int) else None)

    try:
        await channel.set_qos(prefetch_count=100)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(name, look, no_ack=False,
                                     arguments={"x-stream-offset": "next"})
    except BaseException:
        with contextlib.suppress(Exception):
            await channel.close()
        raise

    async def answer() -> int | None:
        try:
            await asyncio.wait({seen}, timeout=PAST_END_S)
            return seen.result() if seen.done() else None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    return asyncio.ensure_future(answer())


def _where(since: int | datetime.datetime) -> str:
    """Where a read of the stream starts, in words."""
    if isinstance(since, datetime.datetime):
        return f"what it took since {since:%Y-%m-%d %H:%M:%S} UTC"
    return f"offset {since}"


#: Prefixes of the throwaway replica ids of operator commands (:func:`throwaway_id`), whose
#: heartbeats in a stream (markers, probes) are no member's: ``retire``'s and
#: ``delete-group``'s.
THROWAWAY = ("retire-", "delete-")


def throwaway_id(prefix: str) -> str:
    """A new replica id for an operator command's heartbeats (``prefix``, one of
    :data:`THROWAWAY`): its clock is empty, so every reader skips them."""
    assert prefix in THROWAWAY, prefix
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def origin_of(body: bytes) -> tuple[str, int] | None:
    """Who sent message ``body`` and the sequence number of its last operation in it (0: a
    heartbeat, no operation); None if it names no sender (or cannot be decoded)."""
    sent = _sent(body)
    return None if sent is None else (sent[0], sent[2])


def _sent(body: bytes) -> tuple[str, str, int] | None:
    """Who sent message ``body``, on which channel (:mod:`crdt_ops.subgroups`), and the
    sequence number of its last operation in it (0: a heartbeat); None if it names no
    sender (or cannot be decoded)."""
    try:
        decoded = codec.decode(body)
    except InvalidMessage:
        return None
    origin = getattr(decoded, "origin", None)
    if not isinstance(origin, str) or not origin:
        return None
    if isinstance(decoded, Batch):
        return origin, decoded.channel, decoded.last_seq
    return origin, origin, 0


async def channels(conn: AbstractConnection, settings: Settings, exchange: AbstractExchange,
                   prefix: str) -> dict[str, int]:
    """Every channel of every sender in the group's stream (its id, without sub-groups),
    from its start to a marker published now (a heartbeat of a :func:`throwaway_id` with
    ``prefix``), and the sequence number of its last operation there (0: heartbeats
    only)."""
    found: dict[str, int] = {}
    marker = message(settings, Replica(throwaway_id(prefix)).clock_message(),
                     message_id=f"{prefix}{uuid.uuid4().hex}")
    async for batch in read_stream(conn, settings, exchange, marker):
        for _, ch, last in filter(None, (_sent(msg.body) for msg in batch)):
            found[ch] = max(found.get(ch, 0), last)
        await batch[-1].ack(multiple=True)
    return found


async def origins(conn: AbstractConnection, settings: Settings, exchange: AbstractExchange,
                  prefix: str) -> set[str]:
    """Every sender in the group's stream, from its start to a marker published now (see
    :func:`channels`)."""
    return {split(ch)[0] for ch in await channels(conn, settings, exchange, prefix)}


async def last_operation(conn: AbstractConnection, settings: Settings,
                         exchange: AbstractExchange, replica_id: str) -> dict[str, int]:
    """The sequence number of ``replica_id``'s last operation in the group's stream on
    each of its channels (``{replica_id: 0}``: none): what a retirement of it must name
    (everything it published is there)."""
    found = await channels(conn, settings, exchange, "retire-")
    return channels_of(found, replica_id) or {replica_id: 0}
