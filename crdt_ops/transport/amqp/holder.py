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
it, may have taken it meanwhile. Then this one waits, as at its start. A process that finds
its ``sole`` queue taken that way was *deposed*: it never takes it again, so it never
publishes again, and its stores are marked so (:mod:`crdt_ops.transport.deposition`).
Finding the queue free says nothing of what happened meanwhile: another process may have
taken it and stopped again. What the node checks then is in
:mod:`crdt_ops.transport.amqp.retake`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiormq
from aio_pika.abc import AbstractConnection

from crdt_ops.transport.amqp.stream_ready import link_of
from crdt_ops.transport.topology import Topology

log = logging.getLogger(__name__)

#: Seconds a standby whose connection was lost waits, on its new one, before it asks for
#: ``sole`` again (:meth:`Holder.hold`): when the broker restarted, every connection was
#: lost, and the process it waited for, which reconnects within a second or two
#: (aio-pika's reconnect interval), takes its queue back first. Asking at once, the
#: standby could win that race (``crdt-ops platform-chaos`` saw it once in 16 broker
#: restarts and kills), and the process it replaced was deposed: it exits, sets its stores
#: aside and comes back as a new replica, though nothing went wrong but the broker's
#: restart.
STANDBY_YIELD_S = 5.0

#: Seconds between two lines saying the replica waits for another connection's hold.
SAY_EVERY_S = 10.0
#: Seconds between two attempts while another connection holds it, first and at most.
RETRY_S = (0.1, 2.0)
#: Pauses (seconds) before each new attempt at ``sole`` when this replica's own holder
#: queue was free (:meth:`Holder._freed_soon`).
FREED_PAUSES_S = (0.05, 0.1, 0.25, 0.5, 1.0)
#: Seconds, beyond two heartbeat timeouts, that a process waits for the broker to drop its
#: own earlier connection, which holds its queues, before it takes the holder for another
#: process (:meth:`Holder._may_be_own`).
HALF_OPEN_MARGIN_S = 10.0


class Holder:
    """Replica ``replica_id``'s holder queue in ``topology``'s group, taken through a
    connection: :meth:`hold` at start, :meth:`take` after a reconnection. While another
    connection holds it, it says so at most every :data:`SAY_EVERY_S`, with how long
    since the first refusal.

    ``sole``: the name of one more queue to hold the same way, shared by every process
    that must not run beside another: the services' logic and each node's worker hold
    their principal's (``crdt.G.logic.held``, ``crdt.G.worker.<node>.held``: see
    :class:`~crdt_ops.transport.amqp.groups.AmqpGroups`), so that of two such processes,
    whatever their replica ids and stores, the second waits as a standby, reading and
    sending nothing, until the first stops. Two logics would each place a container on a
    node of its own choice, and two workers of one node would each start it: a container
    would run twice."""

    def __init__(self, topology: Topology, replica_id: str, sole: str | None = None) -> None:
        self.replica_id, self.group = replica_id, topology.group
        #: The queue's name: ``crdt.G.<replica id>.held``.
        self.queue = topology.holder(replica_id)
        self.sole = sole if sole != self.queue else None
        self._refused_since: float | None = None  # first refusal since it last held it
        self._own_refused_since: float | None = None  # ... with both held by one connection
        self._said: float | None = None
        self._held_sole = False
        #: the link on which ``sole`` was last refused while this process had never held
        #: it (it waits as a standby), None once it holds it; and the link it last gave
        #: way on (:meth:`_give_way`)
        self._standby_on: object | None = None
        self._gave_way_on: object | None = None
        #: set once ``sole``, held before, was refused (after a reconnection): another
        #: process took over meanwhile, and this one's state is stale for good
        #: (:meth:`depose`)
        self.sole_lost = asyncio.Event()
        #: called once, in order, when this process is deposed (:meth:`depose`)
        self.on_deposed: list[Callable[[], object]] = []

    async def take(self, conn: AbstractConnection) -> bool:
        """Declare ``sole`` if given, then the holder queue, on ``conn``, each through a
        channel of its own (closed after: a queue lives as long as the connection).
        Returns False if another connection holds one of them (said, at most every
        :data:`SAY_EVERY_S`; what was declared before it stays held), and always once
        deposed (:meth:`depose`); True once both are held, or those the broker user may
        not declare were left (logged as an error); raises what the broker or the
        connection raise otherwise."""
        if self.sole_lost.is_set():  # never again: its stores hold what must not go out
            self._say(f"replica {self.replica_id} was deposed (another process of its "
                      "principal took over while it was cut off): it publishes nothing and "
                      "waits to be stopped; started again, it sets its stores aside and "
                      "runs as a new replica")
            return False
        # the shared one first: two processes of one replica id, each with several groups
        # started at once, would otherwise each hold one group's own queue and wait for
        # the other's, for good
        for queue in (self.sole, self.queue):
            if queue is None:
                continue
            try:
                if await self._declare(conn, queue):
                    continue
            except aiormq.exceptions.ChannelAccessRefused:
                # a broker user provisioned without it (crdt_ops/transport/provision.py
                # allows it): the replica runs, unguarded against a second process
                log.error("replica %s may not declare %s (its broker user's configure "
                          "permission does not cover it): a second process run as %s would "
                          "go unnoticed", self.replica_id, queue,
                          "this replica" if queue == self.queue else "its principal")
                continue
            if queue != self.sole or not self._held_sole:
                if queue == self.sole:
                    self._standby_on = link_of(conn)
                self._refused(queue)
                return False
            if await self._own_held_elsewhere(conn):
                if self._may_be_own(conn):
                    self._say(f"replica {self.replica_id}: its own earlier connection still "
                              f"holds {queue} and {self.queue} at the broker (the link broke "
                              "on this side only; the broker drops it after its heartbeat "
                              "timeout): waiting for that, then taking them again")
                    return False
            elif await self._freed_soon(conn, queue):
                continue  # (the broker was deleting what its earlier connection held)
            if not self.sole_lost.is_set():  # (a process's other groups: once)
                log.error("replica %s: another process took over %s while this one was cut "
                          "off from the broker; what this one decides now is stale: it "
                          "publishes nothing more, and stops", self.replica_id, queue)
            self.depose()
            return False
        self._refused_since = self._own_refused_since = None
        self._held_sole = self._held_sole or self.sole is not None
        self._standby_on = self._gave_way_on = None
        return True

    def _may_be_own(self, conn: AbstractConnection) -> bool:
        """Whether the connection that holds both queues may still be this process's own
        earlier one: the broker drops a connection it hears nothing from within about two
        heartbeat timeouts (RabbitMQ "Detecting Dead TCP Connections with Heartbeats"; the
        one this client asks for, aiormq's ``heartbeat`` URL parameter, 60 s by default).
        Longer than that plus :data:`HALF_OPEN_MARGIN_S` since the first such refusal, it
        is taken for another process under this replica id. With heartbeats off
        (``heartbeat=0``) the broker keeps a half-open connection until TCP gives up on
        it: the wait is bounded as for 60 s heartbeats, and the process is deposed after
        it (the safe side). When the broker drops the old connection, a standby of
        the principal may take ``sole`` before this process: then it is deposed."""
        now = time.monotonic()
        if self._own_refused_since is None:
            self._own_refused_since = now
        link = link_of(conn)
        beat = getattr(link, "heartbeat_timeout", 60) or 60
        return now - self._own_refused_since <= 2 * beat + HALF_OPEN_MARGIN_S

    @staticmethod
    async def _declare(conn: AbstractConnection, queue: str) -> bool:
        """Declare ``queue`` exclusive on ``conn``, through a channel of its own (closed
        after: the queue lives as long as the connection); False if another connection
        holds it. Raises what the broker or the connection raise otherwise."""
        channel = await conn.channel()
        try:
            await channel.declare_queue(queue, exclusive=True, durable=False,
                                        auto_delete=False)
        except aiormq.exceptions.ChannelLockedResource:  # (the broker closed that channel)
            return False
        await channel.close()
        return True

    async def _freed_soon(self, conn: AbstractConnection, queue: str) -> bool:
        """Whether ``sole``, refused while this replica's own holder queue was free, is
        taken within about 2 s (:data:`FREED_PAUSES_S`): the broker deletes the exclusive
        queues of a connection it closes one after another, so the own queue may be gone
        while ``sole`` is not yet. Not within that: another process holds it."""
        for pause in FREED_PAUSES_S:
            await asyncio.sleep(pause)
            if await self._declare(conn, queue):
                return True
        return False

    async def _own_held_elsewhere(self, conn: AbstractConnection) -> bool:
        """Whether another connection holds this replica's own holder queue, after ``sole``
        was refused to ``conn``: then it is this process's own earlier connection (a link
        that broke on this side only, which the broker keeps until its heartbeat timeout)
        that holds both, not another process of the principal, which holds a queue of its
        own replica id instead (another process under this replica id holds both too:
        :meth:`_may_be_own` bounds the wait). False when the broker user may not declare
        it (taken for another process, as before)."""
        try:
            return not await self._declare(conn, self.queue)
        except aiormq.exceptions.ChannelAccessRefused:
            return False

    def depose(self) -> None:
        """This process was deposed (another took over its ``sole`` queue while it was cut
        off; or a process of the same sole principal that shares its identity was): set
        :attr:`sole_lost`, refuse every later :meth:`take`, and call :attr:`on_deposed`.
        Once only."""
        if self.sole_lost.is_set():
            return
        self.sole_lost.set()
        for hook in self.on_deposed:
            hook()

    async def hold(self, conn: AbstractConnection) -> None:
        """Return once ``conn`` holds the queue (:meth:`take`), trying again as long as
        another connection holds it. A standby refused ``sole`` on an earlier connection
        first waits :data:`STANDBY_YIELD_S` (said in one line)."""
        pause = RETRY_S[0]
        while True:
            await self._give_way(conn)
            if await self.take(conn):
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_S[1])

    async def _give_way(self, conn: AbstractConnection) -> None:
        """Before an attempt: a standby refused ``sole`` on an earlier link waits
        :data:`STANDBY_YIELD_S` on each new link, once (the attempt finds the link as it
        is then: one that came up during a pause of :meth:`hold` counts too). Without a
        link (the broker is still away) it does not wait: the attempt fails, and the wait
        is for the link that comes."""
        link = link_of(conn)
        if self._standby_on is None or link is None or link is self._standby_on \
                or link is self._gave_way_on:
            return
        self._gave_way_on = link
        log.info("replica %s waits %gs on its new connection before it asks for %s again: "
                 "the process it stands by for, if it lost its connection too (a broker "
                 "restart), takes it back first", self.replica_id, STANDBY_YIELD_S, self.sole)
        await asyncio.sleep(STANDBY_YIELD_S)

    @property
    def waiting(self) -> bool:
        """Whether another connection holds a queue this one must hold (it waits)."""
        return self._refused_since is not None

    def _refused(self, queue: str) -> None:
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        if queue != self.queue:
            self._say(f"replica {self.replica_id} waits as a standby: another process of "
                      f"its principal runs (its connection holds {queue}, "
                      f"{now - self._refused_since:.0f}s so far: a second logic, or a worker "
                      "of a node of the same name, maybe in another cell), and only one may "
                      "run at a time; this one takes over once that one stops, or once the "
                      "broker drops its connection (after its heartbeat timeout)")
            return
        self._say(f"replica {self.replica_id} of group {self.group} runs in another process, "
                  "or ran in one that died and whose connection the broker has not dropped "
                  f"yet (it does after its heartbeat timeout): another connection holds "
                  f"{self.queue} ({now - self._refused_since:.0f}s so far). If two processes "
                  "run it, stop one, or give it a replica id of its own")

    def _say(self, line: str) -> None:
        """Log ``line`` as a warning, unless one was said in the last :data:`SAY_EVERY_S`."""
        now = time.monotonic()
        if self._said is not None and now - self._said < SAY_EVERY_S:
            return
        self._said = now
        log.warning("%s", line)
