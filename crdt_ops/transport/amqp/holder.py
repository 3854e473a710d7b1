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
its heartbeat timeout, and it deletes the queue as it closes the connection, once the
connection's channels have handled the frames it read (how RabbitMQ shuts a connection
down; not shown by a test here). So the stream the replica then reads from its logged
offset holds what the previous process published (docs/latency.md: the fence that
publishing before a disk sync would need). A process that was killed leaves no wait: the OS closes
its socket, and the broker its connection.

After a reconnection the queue is declared again (:func:`take`, once per attempt): the
broker deleted it with the connection that was lost.
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


def holder_queue(topology: Topology, replica_id: str) -> str:
    """The holder queue of ``replica_id`` in ``topology``'s group."""
    return f"{topology.queue(replica_id)}.held"


async def take(conn: AbstractConnection, topology: Topology, replica_id: str) -> bool:
    """Declare ``replica_id``'s holder queue on ``conn``, through a channel of its own
    (closed after: the queue lives as long as the connection). Returns False, changing
    nothing, if another connection holds it; True once held, or if the broker user may
    not declare it (said in a warning); raises what the broker or the connection raise
    otherwise."""
    channel = await conn.channel()
    try:
        await channel.declare_queue(holder_queue(topology, replica_id), exclusive=True,
                                    durable=False, auto_delete=False)
    except aiormq.exceptions.ChannelLockedResource:
        return False  # (the broker closed that channel)
    except aiormq.exceptions.ChannelAccessRefused:
        # a broker user provisioned without it (crdt_ops/transport/provision.py allows
        # it): the replica runs, unguarded against a second process
        log.error("replica %s may not declare %s (its broker user's configure permission "
                    "does not cover it): a second process run as this replica would go "
                    "unnoticed", replica_id, holder_queue(topology, replica_id))
        return True
    await channel.close()
    return True


async def hold(conn: AbstractConnection, topology: Topology, replica_id: str) -> None:
    """Return once ``conn`` holds ``replica_id``'s holder queue (:func:`take`), waiting as
    long as another connection holds it, and saying so."""
    said, pause, t0 = 0.0, RETRY_S[0], time.monotonic()
    while not await take(conn, topology, replica_id):
        if time.monotonic() - said >= SAY_EVERY_S:
            said = time.monotonic()
            log.warning("replica %s of group %s runs in another process, or ran in one that "
                        "died and whose connection the broker has not dropped yet (it does "
                        "after its heartbeat timeout): another connection holds %s. Waiting "
                        "(%.0fs so far); if two processes run it, stop one, or give it a "
                        "replica id of its own", replica_id, topology.group,
                        holder_queue(topology, replica_id), time.monotonic() - t0)
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_S[1])
