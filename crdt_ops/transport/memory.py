"""An in-memory network of replicas with seeded delay, reordering, duplication
and partitions that heal.

It models what the broker gives: every message reaches every replica (its own
origin included) at least once; across a partition messages wait, as in a
durable queue, until the partition heals. Time is a tick counter, not a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from crdt_ops.policy import OPEN, WritePolicy
from crdt_ops.replica import Replica
from crdt_ops.subgroups import NONE, SubGroups
from crdt_ops.wire import codec


@dataclass(order=True)
class _InFlight:
    due: int
    order: int
    target: str = field(compare=False)
    data: bytes = field(compare=False)


class MemoryNetwork:
    """Replicas joined by simulated links. Deterministic for a given ``seed``.

    ``delay``: (min, max) ticks a message takes, per link unless ``set_delay``
    overrides it; random delays reorder messages. ``duplicate``: probability a
    delivery happens twice. ``reorder``: probability a message jumps the queue
    (delivered with no delay).
    """

    def __init__(self, seed: int = 0, delay: tuple[int, int] = (0, 0), duplicate: float = 0.0,
                 reorder: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.delay = delay
        self.duplicate = duplicate
        self.reorder = reorder
        self.now = 0
        self.replicas: dict[str, Replica] = {}
        self._links: dict[tuple[str, str], tuple[int, int]] = {}
        self._queue: list[_InFlight] = []
        self._held: list[tuple[str, str, bytes]] = []
        self._groups: dict[str, int] = {}
        self._order = 0
        self.sent = 0
        self.delivered = 0

    def add(self, replica: Replica) -> Replica:
        self.replicas[replica.replica_id] = replica
        return replica

    def set_delay(self, a: str, b: str, delay: tuple[int, int]) -> None:
        """Delay of messages from ``a`` to ``b``."""
        self._links[(a, b)] = delay

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into ``groups``; replicas in no group are alone."""
        self._groups = {}
        for i, group in enumerate(groups):
            for r in group:
                self._groups[r] = i

    def heal(self) -> None:
        """Join all partitions; messages held at the cut go on their way."""
        self._groups = {}
        held, self._held = self._held, []
        for src, dst, data in held:
            self._schedule(src, dst, data)

    def _connected(self, a: str, b: str) -> bool:
        return a == b or (a in self._groups and self._groups.get(a) == self._groups.get(b)) or (
            not self._groups)

    def _schedule(self, src: str, dst: str, data: bytes) -> None:
        if not self._connected(src, dst):
            self._held.append((src, dst, data))
            return
        lo, hi = self._links.get((src, dst), self.delay)
        due = self.now if self.rng.random() < self.reorder else self.now + self.rng.randint(lo, hi)
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self._order += 1
            order = self.rng.randrange(1 << 30) if self.reorder else self._order
            heapq.heappush(self._queue, _InFlight(due, order, dst, data))

    def broadcast(self, src: str, data: bytes) -> None:
        """Send ``data`` from ``src`` to every replica, ``src`` included."""
        self.sent += 1
        for dst in self.replicas:
            self._schedule(src, dst, data)

    def pump(self) -> int:
        """Collect every replica's outgoing messages and put them on the wire."""
        n = 0
        for rid, replica in list(self.replicas.items()):
            for data in replica.outgoing():
                self.broadcast(rid, data)
                n += 1
        return n

    def step(self) -> int:
        """Advance one tick: pump, then deliver every message due. Returns deliveries."""
        self.pump()
        n = 0
        while self._queue and self._queue[0].due <= self.now:
            msg = heapq.heappop(self._queue)
            target = self.replicas.get(msg.target)
            if target is None:
                continue
            target.receive(msg.data)
            n += 1
        self.delivered += n
        self.now += 1
        return n

    def in_flight(self) -> int:
        return len(self._queue) + len(self._held)

    def settle(self, max_ticks: int = 1_000_000) -> int:
        """Step until nothing is in flight and nothing is left to send (partitions
        still hold their messages). Returns the ticks taken."""
        start = self.now
        while self.now - start < max_ticks:
            self.pump()
            if not self._queue:
                return self.now - start
            self.step()
        raise RuntimeError(f"network did not settle within {max_ticks} ticks")

    def converged(self) -> bool:
        """True when every replica has the same clock and state."""
        replicas = list(self.replicas.values())
        if not replicas:
            return True
        clock, state = dict(replicas[0].clock), replicas[0].state()
        return all(dict(r.clock) == clock and r.state() == state for r in replicas[1:])


class MemoryBus:
    """Asyncio delivery between :class:`MemoryNode` objects of one process: each
    message reaches every node (its sender included) on a later loop iteration, or
    ``delay_s`` seconds later (a network's hop: for tests of what happens meanwhile; the
    causal buffer puts what arrives out of order back in order)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.nodes: list[MemoryNode] = []
        self.delay_s = delay_s

    def broadcast(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for node in self.nodes:
            if self.delay_s:
                loop.call_later(self.delay_s, node._deliver, data)
            else:
                loop.call_soon(node._deliver, data)


class MemoryNode:
    """A replica on a :class:`MemoryBus`, with the same interface services use on
    :class:`~crdt_ops.transport.amqp.AmqpNode` (``replica``, ``write()``, ``flush()``,
    ``start()``, ``stop()``), for the demo without a broker and for tests. ``subgroups``:
    the group's sub-group rule (:mod:`crdt_ops.subgroups`); a node that holds one
    sub-group is handed that sub-group's messages and the common part's only, as the
    broker routes them to its queue (:mod:`crdt_ops.transport.topology`)."""

    def __init__(self, bus: MemoryBus, replica_id: str,
                 wall_clock: Callable[[], int] | None = None, policy: WritePolicy = OPEN,
                 subgroups: SubGroups = NONE) -> None:
        self.bus = bus
        self.replica_id = replica_id
        self.replica = Replica(replica_id, wall_clock=wall_clock, policy=policy,
                               subgroups=subgroups)
        #: messages delivered to this node so far (its own included)
        self.received = 0

    async def start(self) -> None:
        """Join the bus: from now on this node receives what is broadcast (nothing
        sent before; there is no history to replay)."""
        self.bus.nodes.append(self)

    async def stop(self) -> None:
        """Leave the bus (messages to it are dropped from now on)."""
        if self in self.bus.nodes:
            self.bus.nodes.remove(self)

    async def __aenter__(self) -> MemoryNode:
        """``async with MemoryNode(bus, "a") as node:``: started, and stopped at the end, as
        an :class:`~crdt_ops.transport.amqp.AmqpNode` is."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Replica]:
        """``async with node.write() as r: ...``: applied at once, broadcast when the
        block exits (if it raises, what it applied goes out with the next flush).
        Raises RuntimeError, applying nothing, while the node is not on its bus
        (:meth:`flush`)."""
        self._check_on_bus()
        yield self.replica
        await self.flush()

    def _check_on_bus(self) -> None:
        if self not in self.bus.nodes:
            raise RuntimeError(f"node {self.replica_id!r} is not on its bus: await "
                               "node.start() before writing (a stopped node writes no more)")

    def health(self) -> dict[str, str]:
        """Nothing here can fail: no store, no broker."""
        return {}

    async def store_works(self) -> None:
        """At once: there is no store to fail."""

    async def flush(self) -> None:
        """Broadcast the replica's outgoing messages (delivered on later loop
        iterations, to every node on the bus, this one included). Raises RuntimeError,
        sending nothing, while the node is not on its bus (before :meth:`start`, after
        :meth:`stop`): the bus keeps no history, so what it sent then would never reach
        a node that joins later, and every later message of it would wait there for it."""
        self._check_on_bus()
        for data in self.replica.outgoing():
            self.bus.broadcast(data)

    def confirmed_through(self) -> float:
        """Now: a flushed message is on the bus at once (see ``AmqpNode``'s)."""
        return time.monotonic()

    def heard_through(self) -> float:
        """Now, less nothing: the bus delivers within a loop iteration (see
        ``AmqpNode``'s)."""
        return time.monotonic()

    def _deliver(self, data: bytes) -> None:
        if self not in self.bus.nodes:
            return
        r = self.replica
        if r.held_subgroup is not None and not r.subgroups.holds(r.replica_id,
                                                                 codec.subgroup_of(data)):
            return  # (the broker routes it to the queues of its sub-group's holders only)
        self.received += 1
        self.replica.receive(data)
        for out in self.replica.outgoing():  # what change callbacks wrote
            self.bus.broadcast(out)
