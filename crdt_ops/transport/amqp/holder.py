"""One process at a time runs a replica: its *holder queue* on the broker.

A replica of group G declares the queue ``crdt.G.<replica id>.held`` as it starts, before
it reads the stream or publishes anything, as an exclusive queue: RabbitMQ lets one
connection use it, and deletes it when that connection closes (RabbitMQ "Queues",
exclusive queues). A second process that starts with the same replica id while the first
runs is refused the queue (``RESOURCE_LOCKED``). It waits, and says so every
:data:`SAY_EVERY_S`, until the first one stops. Had both run, they would have numbered
their operations alike, every other replica would have kept one of each pair and dropped
the other as a duplicate, and the group would never have converged, without an error
anywhere.

The wait also covers a process that died without closing its connection: its machine
lost power, or froze. The broker keeps the queue until it drops that connection, after
its heartbeat timeout, and deletes the queue as it closes the connection, after whatever
it routes of that connection; what it had not read by then it may drop
(``tests/transport/test_holder.py``: a connection the broker stopped reading under a
memory alarm, whose process was killed with publishes unread; docs/latency.md says what
that shows and what it does not). So the stream the replica then reads from its logged
offset holds everything of the previous process's that another replica can have received
(docs/latency.md: the fence that publishing before a disk sync would need). A process
that was killed leaves no wait: the OS closes its socket, and the broker its connection.

After a reconnection the queue is taken again (:meth:`Holder.hold`) before the replica
publishes or consumes anything on the new connection (the stream gate does it first on each
connection: :class:`~crdt_ops.transport.amqp.stream_ready.StreamGate`): the broker deleted it
with the connection that was lost, and another process of the same replica id, waiting for
it, may have taken it meanwhile. Then this one waits, as at its start.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiormq
from aio_pika.abc import AbstractConnection

from crdt_ops.transport.topology import Topology

log = logging.getLogger(__name__)

#: Seconds between two lines saying the replica waits for another connection's hold.
SAY_EVERY_S = 10.0
#: Seconds between two attempts while another connection holds it, first and at most.
RETRY_S = (0.1, 2.0)


class Holder:
    """Replica ``replica_id``'s holder queue in ``topology``'s group, taken through a
    connection: :meth:`hold` at start, :meth:`take` after a reconnection. While another
    connection holds it, it says so at most every :data:`SAY_EVERY_S`, with how long
    since the first refusal."""

    def __init__(self, topology: Topology, replica_id: str) -> None:
        self.replica_id, self.group = replica_id, topology.group
        #: The queue's name: ``crdt.G.<replica id>.held``.
        self.queue = f"{topology.queue(replica_id)}.held"
        self._refused_since: float | None = None  # first refusal since it last held it
        self._said: float | None = None

    async def take(self, conn: AbstractConnection) -> bool:
        """Declare the holder queue on ``conn``, through a channel of its own (closed
        after: the queue lives as long as the connection). Returns False, changing
        nothing, if another connection holds it (said, at most every
        :data:`SAY_EVERY_S`); True once held, or if the broker user may not declare it
        (logged as an error); raises what the broker or the connection raise
        otherwise."""
        channel = await conn.channel()
        try:
            await channel.declare_queue(self.queue, exclusive=True, durable=False,
                                        auto_delete=False)
        except aiormq.exceptions.ChannelLockedResource:  # (the broker closed that channel)
            self._refused()
            return False
        except aiormq.exceptions.ChannelAccessRefused:
            # a broker user provisioned without it (crdt_ops/transport/provision.py allows
            # it): the replica runs, unguarded against a second process
            log.error("replica %s may not declare %s (its broker user's configure "
                      "permission does not cover it): a second process run as this replica "
                      "would go unnoticed", self.replica_id, self.queue)
            return True
        self._refused_since = None
        await channel.close()
        return True

    async def hold(self, conn: AbstractConnection) -> None:
        """Return once ``conn`` holds the queue (:meth:`take`), trying again as long as
        another connection holds it."""
        pause = RETRY_S[0]
        while not await self.take(conn):
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_S[1])

    def _refused(self) -> None:
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        if self._said is not None and now - self._said < SAY_EVERY_S:
            return
        self._said = now
        log.warning("replica %s of group %s runs in another process, or ran in one that "
                    "died and whose connection the broker has not dropped yet (it does "
                    "after its heartbeat timeout): another connection holds %s (%.0fs so "
                    "far). If two processes run it, stop one, or give it a replica id of "
                    "its own", self.replica_id, self.group, self.queue,
                    now - self._refused_since)
