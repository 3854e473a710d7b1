"""``crdt-ops chaos``: a fault-injection run over a real broker, checked by a ledger.

What runs: a throwaway RabbitMQ node (:class:`~tools.rabbitnode.RabbitNode`, in a
temporary directory, destroyed afterwards, so killing it harms nobody) and
``--replicas`` replica processes (``crdt-ops replica``, :mod:`services.replica`'s seeded
workload on counters, a set and container records), which together issue ``--ops``
operations at a steady rate spread over ``--duration`` seconds. While they do, eight
faults are injected one after the other, each once the replicas together have issued a
given share of the operations (:data:`SCHEDULE`):

1. ``broker-restart``: ``rabbitmqctl stop_app``, 2 s down, ``start_app``;
2. ``replica-kill``: one replica SIGKILLed, and started again 1 s later on its store;
3. ``stream-cut``: the group's stream and one replica's queue unbound from the group's
   exchange (as an exchange deleted and declared again by a replica that bound its own
   queue first leaves them) while another replica writes :data:`CUT_OPS` more operations
   (SIGUSR1: the workload may be over by then) and the broker confirms them, then bound
   again: those reached the other queues, not the stream; the cut-off replica finds the
   gap, does not find it in the stream, and asks their sender, who publishes them again
   (:mod:`crdt_ops.transport.resend`). A replica that (re)connects meanwhile binds the
   stream again as it declares the topology: a cut found undone at its end is made again
   (up to :data:`CUT_ATTEMPTS` times);
4. ``connection-close``: ``rabbitmqctl close_connection`` on another replica's connection;
5. ``store-lock``: the killed replica's SQLite store locked from another connection
   (``BEGIN EXCLUSIVE``) for ``--lock-s`` seconds: its writes and log appends fail, it
   restores memory from the store, refuses writes and holds deliveries; the fault waits
   until it reports the failure over;
6. ``replica-pause``: a third replica SIGSTOPped for ``--pause-s`` seconds, then SIGCONT;
7. ``topology-delete``: the group's exchange ``crdt.chaos`` deleted, and the queue of
   the replica whose connection was closed, with what it held (as an operator could);
8. ``broker-kill``: the broker's VM SIGKILLed, and started again 1 s later on its data.

Two membership changes are interleaved with them (:mod:`crdt_ops.membership`; the
replicas run ``--membership managed``, so causal stability and compaction are at work
throughout):

* ``replica-join``: replica ``joiner``, with an empty store, is started once 30 % of
  the operations were issued: it replays the stream, asks to be admitted, and issues
  its share of the operations once a member admitted it (the fault waits for that);
* ``replica-retire``: replica ``leaver`` is sent SIGUSR2 once 60 % were issued: it
  issues the rest of its share at once and retires right after its last write block
  (:meth:`~crdt_ops.transport.amqp.AmqpNode.leave`), so its last operations are still
  on their way to the others when its retirement follows them; the fault waits until it
  stopped. Every remaining replica must end with ``leaver`` retired and ``joiner`` a
  member.

Then it waits until every replica reports the same state and clock with nothing
buffered or unpublished, stops them (SIGTERM), and audits the ledger.

**Late delivery** (``--late-replica``): replica ``r0`` joins the group through a relay
that delivers its input late and out of order. ``r0`` runs in a group of its own
(``<group>-late``: its own exchange, queue and stream); the relay (a thread of this
process, one AMQP connection) reads the group's stream (everything the group's
exchange routed, even while a deleted exchange had lost every other binding) and
publishes each message into ``r0``'s exchange after a random delay of 0 to
``--late-max-delay-s`` seconds, drawn per message, so ``r0`` receives operations before
the ones they depend on (other origins' and the same origin's earlier ones) and its
causal buffer must hold them; ``r0``'s own messages are relayed to the group at once.
The relay claims the founding of ``<group>-late`` (exchange ``crdt.<group>-late.founder``) for
the group before ``r0`` starts, so ``r0`` joins the group instead of founding another.
Relayed messages carry the header ``x-chaos-relayed`` so the relay never relays them
back. A message counts as relayed only once its relayed copy is confirmed, and after a
broker fault the relay reads the stream again from the oldest message it had not
relayed, so broker faults make it deliver some twice, never lose one (``r0``'s own
messages reach the relay through a durable queue, acked once relayed). The largest number of
operations seen waiting in ``r0``'s causal buffer (its state file, sampled every
0.25 s) is printed.

**The ledger** is written by each replica process (``crdt-ops replica --ledger FILE``)
into a file of its own, independently of its state and store; its lines (S, A, P, I, R,
L) are described in :mod:`services.ledger`.

**The rule** (:func:`audit`). A process killed by SIGKILL loses its memory; its next
``S`` line gives the clock C its store recovered, and exactly the operations (O, s)
with s <= C[O] are in the recovered state (per origin, delivery is contiguous). So at
each ``S``: applied records of (O, s) with s > C[O] are voided (those applications
were lost with the memory and will legitimately happen again); a ``P`` block without
its ``I`` is *issued* if it is within C[own] (it was made durable though ``write()``
never returned: it will be published) and *not issued* if it is above (it was lost
with the memory before being accepted: never published, and its sequence numbers are
used again); the part of an accepted block above C[own] is accepted operations lost at
their origin (an anomaly, and counted as lost at every replica). A recovered (O, s)
that the ledger never saw applied is an anomaly.

Then, for every issued operation and every replica: applied 0 times is *lost*,
more than once is *applied twice* (each counted per (operation, replica)); an
operation applied somewhere but never issued is a *phantom*. Cross-check with the
state: at every replica the counter ``issued/<origin>`` (one increment per workload
operation, see :mod:`services.replica`) must equal the workload operations of the
ledger's issued blocks of that origin.

Output: progress lines on stderr; on stdout a summary, then the last line
``ops=N faults=F lost=L applied_twice=D converged=true|false seconds=S``, where
``seconds`` is the time from the end of the last fault (the broker accepting
connections again) until all replicas were seen converged (the state files are read
every 0.25 s); it includes whatever the workload still had to issue then, so the
summary also gives, from the start, when the last fault was over, when every replica
had issued its share, and when convergence was seen. Exit status 0 only when
all faults were done, lost=0, applied_twice=0, converged=true, and there were no
phantoms, anomalies or cross-check mismatches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdt_ops.replica import Replica
from crdt_ops.transport.amqp.stream_ready import stream_takes_writes
from crdt_ops.transport.config import Settings
from crdt_ops.transport.topology import Topology, declare
from tools.harness import wait_until
from tools.rabbitnode import RabbitNode
from tools.replica_process import ReplicaProcess

# ---------------------------------------------------------------- the ledger


Block = tuple[int, int, int]  # first seq, last seq, workload operations


@dataclass
class _ReplicaLedger:
    """One replica's ledger, read with the restart rule applied."""

    rid: str
    applied: dict[str, bytearray] = field(default_factory=dict)  # origin -> count per seq
    pending: list[Block] = field(default_factory=list)
    issued: list[Block] = field(default_factory=list)
    durable_unacked: int = 0  # operations (seqs)
    unaccepted: int = 0  # operations lost with the memory before being accepted
    voided: int = 0  # applications voided at restarts
    accepted_lost: list[Block] = field(default_factory=list)
    restarts: int = -1
    restores: int = 0  # memory restored from the store after a store failure
    left: int | None = None  # the replica retired after this operation of its own
    anomalies: list[str] = field(default_factory=list)
    #: pending blocks a restore found in the store: their write() may still return (the
    #: failure came after their commit; AmqpNode counts the restore once the store works)
    in_flight: list[Block] = field(default_factory=list)

    def start(self, clock: dict[str, int], restore: bool = False) -> None:
        if restore:
            self.restores += 1
        else:
            self.restarts += 1
        own = clock.get(self.rid, 0)
        self.in_flight = []
        for first, last, n in self.pending:
            if last <= own:
                self.issued.append((first, last, n))
                self.durable_unacked += last - first + 1
                if restore:  # its write() may still return: it was committed before the
                    self.in_flight.append((first, last, n))  # failure (accepted after all)
            elif first > own:
                self.unaccepted += last - first + 1
            else:
                self.anomalies.append(f"{self.rid}: block {first}..{last} only partly "
                                      f"recovered (clock {own})")
        self.pending.clear()
        lost = [b for b in self.issued if b[1] > own]
        if lost:  # what is above the recovered clock is gone (and its seqs used again)
            self.accepted_lost.extend((max(a, own + 1), b, n) for a, b, n in lost)
            self.anomalies.append(f"{self.rid}: accepted blocks {lost} not in the recovered "
                                  f"store (clock {own})")
            self.issued = [(a, min(b, own), n) for a, b, n in self.issued if a <= own]
        for origin, counts in self.applied.items():
            cut = clock.get(origin, 0) + 1
            self.voided += sum(1 for c in counts[cut:] if c)
            del counts[cut:]
        for origin, upto in clock.items():
            counts = self.applied.get(origin, bytearray())
            unseen = sum(1 for s in range(1, upto + 1) if s >= len(counts) or not counts[s])
            if unseen:
                self.anomalies.append(f"{self.rid}: recovered {unseen} operations of {origin} "
                                      "the ledger never saw applied")

    def apply(self, origin: str, first: int, last: int) -> None:
        counts = self.applied.setdefault(origin, bytearray())
        if len(counts) <= last:
            counts.extend(bytes(last + 1 - len(counts)))
        for s in range(first, last + 1):
            counts[s] = min(counts[s] + 1, 255)

    def accept(self, block: Block) -> None:
        if block in self.pending:
            self.pending.remove(block)
            self.issued.append(block)
        elif block in self.in_flight:  # committed, then the store failed, then write() returned
            self.in_flight.remove(block)
            self.durable_unacked -= block[1] - block[0] + 1
        else:
            self.anomalies.append(f"{self.rid}: accepted block {block} was never pending")


def read_ledger(rid: str, lines: Iterable[str]) -> _ReplicaLedger:
    """Replay one replica's ledger lines under the restart rule."""
    led = _ReplicaLedger(rid)
    for line in lines:
        kind, _, rest = line.partition(" ")
        try:
            if kind in ("S", "R"):
                led.start({str(k): int(v) for k, v in json.loads(rest).items()},
                          restore=kind == "R")
            elif kind == "A":
                origin, first, last = rest.split()
                led.apply(origin, int(first), int(last))
            elif kind == "L":
                led.left = int(rest)
            elif kind in ("P", "I"):
                a, b, n = (int(x) for x in rest.split())
                if kind == "P":
                    led.pending.append((a, b, n))
                else:
                    led.accept((a, b, n))
            else:
                raise ValueError(kind)
        except ValueError:
            led.anomalies.append(f"{rid}: unreadable ledger line {line!r}")
    if led.pending:
        led.anomalies.append(f"{rid}: blocks {led.pending} neither accepted nor recovered")
    return led


@dataclass
class Audit:
    """The ledger's verdict over all replicas (see the module docstring)."""

    issued: dict[str, int]  # per origin: operations (sequence numbers) issued
    workload: dict[str, int]  # per origin: workload operations in them
    lost: int  # (issued operation, replica) pairs never applied
    applied_twice: int  # (issued operation, replica) pairs applied more than once
    phantom: int  # (operation, replica) pairs applied though never issued
    durable_unacked: int
    unaccepted: int
    voided: int
    restarts: dict[str, int]
    restores: dict[str, int]
    anomalies: list[str]


def audit(ledgers: dict[str, list[str]]) -> Audit:
    """Apply the rule to every replica's ledger lines and count lost, doubled and
    phantom applications of every issued operation at every replica."""
    reps = {rid: read_ledger(rid, lines) for rid, lines in ledgers.items()}
    anomalies = [a for led in reps.values() for a in led.anomalies]
    issued: dict[str, bytearray] = {}
    workload: dict[str, int] = {}
    for rid, led in reps.items():
        marks = issued[rid] = bytearray()
        workload[rid] = 0
        for first, last, n in led.issued:
            if len(marks) <= last:
                marks.extend(bytes(last + 1 - len(marks)))
            for s in range(first, last + 1):
                if marks[s]:
                    anomalies.append(f"{rid}: operation {s} issued twice")
                marks[s] = 1
            workload[rid] += n
        gaps = sum(1 for s in range(1, len(marks)) if not marks[s])
        if gaps:
            anomalies.append(f"{rid}: {gaps} sequence numbers below its last were never issued")
        if led.left is not None and len(marks) - 1 > led.left:
            anomalies.append(f"{rid}: issued operations up to {len(marks) - 1} though it "
                             f"retired after {led.left}")
    # an accepted operation missing from its origin's recovered store is lost everywhere
    lost = len(reps) * sum(b - a + 1 for led in reps.values() for a, b, _ in led.accepted_lost)
    twice = phantom = 0
    for led in reps.values():
        for origin in set(issued) | set(led.applied):
            marks = issued.get(origin, bytearray())
            counts = led.applied.get(origin, bytearray())
            for s in range(1, max(len(marks), len(counts))):
                c = counts[s] if s < len(counts) else 0
                if s < len(marks) and marks[s]:
                    lost += c == 0 and led.left is None
                    twice += c > 1
                elif c:
                    phantom += 1
    return Audit(
        issued={r: sum(m) for r, m in issued.items()}, workload=workload, lost=lost,
        applied_twice=twice, phantom=phantom,
        durable_unacked=sum(led.durable_unacked for led in reps.values()),
        unaccepted=sum(led.unaccepted for led in reps.values()),
        voided=sum(led.voided for led in reps.values()),
        restarts={r: led.restarts for r, led in reps.items()},
        restores={r: led.restores for r, led in reps.items() if led.restores},
        anomalies=anomalies)


def cross_check(result: Audit, states: dict[str, dict[str, Any]]) -> list[str]:
    """Where a replica's ``issued/<origin>`` counter differs from the ledger's count of
    that origin's workload operations (one line each; empty: they all agree)."""
    return [f"{rid}: issued/{origin} = {state.get(f'issued/{origin}')}, ledger {n}"
            for rid, state in states.items() for origin, n in result.workload.items()
            if state.get(f"issued/{origin}", 0) != n]


# ---------------------------------------------------------------- replica processes


class LedgerReplica(ReplicaProcess):
    """A :class:`~tools.replica_process.ReplicaProcess` that also writes its ledger
    (``--ledger <id>.ledger`` in ``workdir``); it can be SIGKILLed, paused, resumed and
    started again (``down`` is set while it is killed on purpose)."""

    def __init__(self, url: str, group: str, rid: str, workdir: Path, args: list[str]) -> None:
        self.ledger = workdir / f"{rid}.ledger"
        super().__init__(url, group, rid, workdir, [*args, "--ledger", str(self.ledger)])
        self.down = False  # killed on purpose, to be started again

    def exited(self) -> bool:
        """Whether the process ended without being killed on purpose."""
        return self.returncode is not None and not self.down

    def ledger_lines(self) -> list[str]:
        text = self.ledger.read_text() if self.ledger.exists() else ""
        lines = text.split("\n")
        return lines[:-1]  # the last piece is empty, or a line the process did not finish


# ---------------------------------------------------------------- late delivery


RELAYED = "x-chaos-relayed"


def _stream_offset(msg: Any) -> int:
    """A message's offset in the stream it was read from (RabbitMQ's ``x-stream-offset``
    header, "Streams" guide)."""
    offset = (msg.headers or {}).get("x-stream-offset")
    if not isinstance(offset, int):
        raise ValueError(f"a message from a stream without an x-stream-offset: {offset!r}")
    return offset


class Relay:
    """Delivers the group's messages to the late replica's exchange after random delays
    (0 to ``max_delay_s``, per message), and the late replica's to the group at once.

    Guarantee: every message that reaches the group's exchange is published to the late
    exchange at least once, and every message the late replica publishes reaches the
    group's exchange at least once (a message is acked only after its relayed copy is
    confirmed; after a broker fault it reconnects and the broker delivers the unacked
    ones again). It never relays a message it relayed itself."""

    def __init__(self, url: str, group: Settings, late: Settings, late_id: str,
                 max_delay_s: float, seed: int) -> None:
        self.url, self.group, self.late, self.late_id = url, group, late, late_id
        self.max_delay_s = max_delay_s
        self.rng = random.Random(f"relay:{seed}")
        self.relayed_in = self.relayed_out = self.max_held = self.sessions = 0
        # the group's stream: where the next session reads from, and what is held
        self._resume: int | None = None  # None: its first message
        self._pending: set[int] = set()
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="chaos-relay", daemon=True)

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError("the late-delivery relay could not set up within "
                               f"{timeout:.0f}s")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        while not self._stop.is_set():
            try:
                await self._session()
            except Exception as e:  # the broker went away: connect again
                if not self._failing:  # once per outage
                    print(f"chaos relay: {type(e).__name__}: {e}; reconnecting",
                          file=sys.stderr, flush=True)
                self._failing = True
            if not self._stop.is_set():
                await asyncio.sleep(0.5)

    async def _session(self) -> None:
        import aio_pika
        from aio_pika.abc import AbstractIncomingMessage

        assert self._stop is not None
        conn = await aio_pika.connect(self.url, timeout=10, client_properties={
            "connection_name": "crdt-ops chaos relay"})
        async with conn:
            # a relayed message the broker returns (it reached no queue: an exchange
            # re-created without its bindings) fails the session: it is not acked
            pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            sub = await conn.channel()
            await sub.set_qos(prefetch_count=0)
            exchanges = {}
            for s in (self.group, self.late):
                # the stream bound first, as every replica declares it: nothing relayed
                # before the replicas declared theirs is missing from it
                names = Topology.of(s)
                exchanges[s.group] = (await declare(pub, names))[names.exchange]
            # nothing relayed until both streams take writes (after a broker restart they
            # confirm and drop what is routed to them while they start)
            for s in (self.group, self.late):
                await stream_takes_writes(conn, Topology.of(s).stream, _relay_probe)
            await self._claim_late_founding(pub)
            # the group's side is read from its stream, which holds every message its
            # exchange routed and every message a replica put there itself (a refusal):
            # a queue of ours, bound to the exchange, would miss what it routed while an
            # operator's deletion had left the exchange without our binding
            await sub.set_qos(prefetch_count=20_000)
            to_late = await sub.declare_queue(Topology.of(self.group).stream, passive=True)
            if self._pending:
                self._resume = min(self._pending)
            self._pending.clear()
            from_late = await sub.declare_queue(f"chaos.{self.group.group}.from-late",
                                                durable=True)
            await from_late.bind(Topology.of(self.late).exchange)
            held: list[tuple[float, int, AbstractIncomingMessage, str]] = []
            order = itertools.count()
            wake = asyncio.Event()

            async def take_in(msg: AbstractIncomingMessage) -> None:
                offset = _stream_offset(msg)
                self._resume = max(offset + 1, self._resume or 0)
                if (msg.headers or {}).get(RELAYED):  # the late replica's, relayed by us
                    await msg.ack()
                    return
                self._pending.add(offset)
                due = time.monotonic() + self.rng.uniform(0, self.max_delay_s)
                heapq.heappush(held, (due, next(order), msg, self.late.group))
                self.max_held = max(self.max_held, len(held))
                wake.set()

            async def take_out(msg: AbstractIncomingMessage) -> None:
                if (msg.headers or {}).get(RELAYED):  # the group's, relayed by us
                    await msg.ack()
                    return
                heapq.heappush(held, (time.monotonic(), next(order), msg, self.group.group))
                wake.set()

            await to_late.consume(take_in, arguments={
                "x-stream-offset": "first" if self._resume is None else self._resume})
            await from_late.consume(take_out)
            self.sessions += 1
            self.ready.set()
            self._failing = False
            while not self._stop.is_set():
                if conn.is_closed:
                    raise ConnectionError("connection closed")
                now = time.monotonic()
                due = []
                while held and held[0][0] <= now:
                    due.append(heapq.heappop(held))
                if due:
                    await asyncio.gather(*(self._relay(exchanges[dest], msg)
                                           for _, _, msg, dest in due))
                    for _, _, msg, dest in due:
                        if dest == self.late.group:
                            self.relayed_in += 1
                            self._pending.discard(_stream_offset(msg))
                        else:
                            self.relayed_out += 1
                wake.clear()
                wait = min(held[0][0] - time.monotonic(), 0.1) if held else 0.1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(wait, 0.001))

    async def _claim_late_founding(self, channel: Any) -> None:
        """Publish a claim naming the group to the exchange ``crdt.<group>-late.founder``
        (declared with the late group's topology) before the late replica starts: the
        first claim in ``crdt.<group>-late.founders`` is not the late replica's, so it asks
        to be admitted instead of founding a group of its own: the late group is the
        group, relayed."""
        import aio_pika

        founder = await channel.get_exchange(Topology.of(self.late).founder)
        with contextlib.suppress(aio_pika.exceptions.DeliveryError):  # a refusing queue
            await founder.publish(aio_pika.Message(self.group.group.encode(),
                                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                  routing_key="", timeout=30)

    async def _relay(self, exchange: Any, msg: Any) -> None:
        import aio_pika

        headers = dict(msg.headers or {})
        headers[RELAYED] = 1
        await exchange.publish(aio_pika.Message(
            msg.body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id=msg.app_id, type=msg.type, message_id=msg.message_id,
            user_id=msg.user_id), routing_key="", timeout=30)
        await msg.ack()


def _relay_probe(message_id: str) -> Any:
    """A probe of a stream (:func:`stream_takes_writes`): a heartbeat of nobody, marked
    as relayed so that the relay does not pass it on."""
    import aio_pika

    return aio_pika.Message(Replica("chaos-relay").clock_message(), headers={RELAYED: 1},
                            message_id=message_id,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


# ---------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, the share of all operations issued before it starts, and
    the replica it hits (an index into the replicas ``r<i>``, or a replica id; None:
    the broker)."""

    kind: str
    at: float
    target: int | str | None = None


#: The replica started mid-run, and the one that retires mid-run.
JOINER, LEAVER = "joiner", "leaver"

#: The faults, in order; each starts when the replicas together issued ``at`` of the
#: operations and the one before it is over. ``r0`` is the late replica (when there is one).
SCHEDULE = (
    Fault("broker-restart", 0.10),
    Fault("replica-kill", 0.25, 1),
    Fault("replica-join", 0.30, JOINER),
    Fault("stream-cut", 0.35, 3),
    Fault("connection-close", 0.40, 2),
    Fault("store-lock", 0.45, 1),
    Fault("replica-pause", 0.50, 3),
    Fault("topology-delete", 0.55, 2),
    Fault("replica-retire", 0.60, LEAVER),
    Fault("broker-kill", 0.70),
)
#: The joiner issues its share from its start (at 30 %) over this share of the duration.
JOINER_SPAN = 0.6


async def _delete_topology(url: str, exchange: str, queue: str) -> None:
    """Delete an exchange and a queue, as an operator could."""
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        await channel.exchange_delete(exchange)
        await channel.queue_delete(queue)


#: Operations a replica writes while the ``stream-cut`` fault has the stream unbound
#: (each replica runs with ``--more-on-signal`` this many).
CUT_OPS = 20
#: Seconds the run waits, once converged, for what each replica delivered to be causally
#: stable before the final reports ("causally stable at the end").
STABLE_WAIT_S = 10.0
#: How many times ``stream-cut`` cuts before it gives up: a replica that (re)connects
#: declares the topology, which binds the stream again, and one restarted by the fault
#: before may do so just after the cut began.
CUT_ATTEMPTS = 3


async def _bind(url: str, exchange: str, queues: list[str], bind: bool) -> None:
    """Bind the queues named ``queues`` (the stream among them) to ``exchange``, or unbind
    them."""
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        for name in queues:
            q = await channel.declare_queue(name, passive=True)
            await (q.bind(exchange) if bind else q.unbind(exchange))


def bound(node: RabbitNode, exchange: str, queues: list[str]) -> list[str]:
    """Those of ``queues`` that are bound to ``exchange`` now (``rabbitmqctl
    list_bindings``)."""
    out = node.ctl("list_bindings", "source_name", "destination_name", "-q")
    pairs = {tuple(line.split("\t")[:2]) for line in out.splitlines()}
    return [q for q in queues if (exchange, q) in pairs]


class Chaos:
    """One run: broker, replicas, the relay (late mode), faults, audit."""

    def __init__(self, opts: argparse.Namespace, say: Callable[[str], None]) -> None:
        self.opts = opts
        self.say = say
        self.t0 = time.monotonic()
        self.workdir = Path(opts.keep_dir or tempfile.mkdtemp(prefix="crdt-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = RabbitNode(f"chaos{uuid.uuid4().hex[:8]}", self.workdir)
        self.procs: list[LedgerReplica] = []
        self.relay: Relay | None = None
        self.faults_done: list[str] = []
        self.fault_error: str | None = None
        self.abort = threading.Event()
        self.last_fault_end: float | None = None
        self.workload_end: float | None = None
        self.max_buffered: dict[str, int] = {}
        self.issued_now = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        o = self.opts
        self.say(f"starting RabbitMQ node {self.node.node} in {self.workdir}")
        self.node.start()
        group = Settings(amqp_url=self.node.url, group="chaos")
        late = Settings(amqp_url=self.node.url, group="chaos-late")
        if o.late_replica:
            self.relay = Relay(self.node.url, group, late, "r0", o.late_max_delay_s, o.seed)
            self.relay.start()
        ids = [f"r{i}" for i in range(o.replicas)] + [JOINER, LEAVER]
        per = [o.ops // len(ids) + (i < o.ops % len(ids)) for i in range(len(ids))]
        for i, (rid, n) in enumerate(zip(ids, per, strict=True)):
            span = o.duration * (JOINER_SPAN if rid == JOINER else 1)
            g = late.group if o.late_replica and i == 0 else group.group
            args = ["--ops", str(n), "--seed", str(o.seed), "--per-write", str(o.per_write),
                    "--more-on-signal", str(CUT_OPS),
                    "--rate", f"{n / span:.3f}", "--heartbeat-s", "1",
                    "--membership", "managed"]
            if rid == LEAVER:
                args.append("--leave-on-signal")
            self.procs.append(LedgerReplica(self.node.url, g, rid, self.workdir, args))
        for p in self.procs:
            if p.replica_id != JOINER:
                p.start()
        self.say(f"{len(ids) - 1} replicas started ({JOINER} joins later, {LEAVER} "
                 f"retires), {o.ops:,} operations at {o.ops / o.duration:,.0f}/s planned"
                 + (f"; r0 delivered late (0-{o.late_max_delay_s:g}s per message)"
                    if o.late_replica else ""))

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop(timeout=60)
        if self.relay is not None:
            self.relay.stop()
        with contextlib.suppress(Exception):
            self.node.destroy()
        if not self.opts.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------ faults

    def _target(self, f: Fault) -> LedgerReplica | None:
        if f.target is None:
            return None
        if isinstance(f.target, str):
            return next(p for p in self.procs if p.replica_id == f.target)
        return self.procs[f.target % int(self.opts.replicas)]

    def _await_report(self, p: LedgerReplica, what: str, test: Callable[[dict[str, Any]], bool],
                      timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not test(p.report()):
            if p.exited():
                raise RuntimeError(f"{p.replica_id} exited ({p.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.replica_id}: not {what} after {timeout:.0f}s")
            time.sleep(0.25)

    def _fault(self, f: Fault) -> None:
        n = self.node
        target = self._target(f)
        if f.kind == "broker-restart":
            n.stop_app()
            time.sleep(2)
            n.start_app()
        elif f.kind == "broker-kill":
            n.kill()
            time.sleep(1)
            n.start()
        elif f.kind == "replica-kill":
            assert target is not None
            target.down = True
            target.kill()
            time.sleep(1)
            target.start()
            target.down = False
        elif f.kind == "replica-pause":
            assert target is not None
            target.signal(signal.SIGSTOP)
            time.sleep(self.opts.pause_s)
            target.signal(signal.SIGCONT)
        elif f.kind == "replica-join":
            assert target is not None
            target.start()
            self._await_report(target, "admitted", lambda r: bool(r.get("member")))
        elif f.kind == "replica-retire":
            assert target is not None
            target.signal(signal.SIGUSR2)
            self._await_report(target, "retired", lambda r: bool(r.get("left")))
        elif f.kind == "store-lock":
            assert target is not None
            before = int(target.report().get("store_failures", 0))
            lock = sqlite3.connect(target.store, timeout=10, isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")  # its writes fail; reads go on (WAL)
                time.sleep(self.opts.lock_s)
                lock.execute("ROLLBACK")
            finally:
                lock.close()
            self._await_report(target, "through a store failure", lambda r: bool(
                r.get("store_failures", 0) > before and r.get("store_ok")))
        elif f.kind == "topology-delete":
            assert target is not None
            asyncio.run(_delete_topology(n.url, "crdt.chaos", f"crdt.chaos.{target.replica_id}"))
        elif f.kind == "stream-cut":
            assert target is not None
            cut = ["crdt.chaos.log", f"crdt.chaos.{target.replica_id}"]
            writer = self.procs[(self.procs.index(target) - 1) % int(self.opts.replicas)]
            try:
                for attempt in range(1, CUT_ATTEMPTS + 1):
                    again = self._cut_once(writer, cut)
                    if not again:  # unbound now, so since the unbinding: only we unbind
                        break
                    self.say(f"stream-cut: {', '.join(again)} bound again during the cut "
                             f"(a replica's set-up declares the topology; attempt {attempt} "
                             f"of {CUT_ATTEMPTS}): cutting again")
                else:
                    raise RuntimeError(f"the stream stayed bound in {CUT_ATTEMPTS} cuts")
            finally:
                asyncio.run(_bind(n.url, "crdt.chaos", cut, bind=True))
        elif f.kind == "connection-close":
            assert target is not None
            deadline = time.monotonic() + 30
            while not (pids := [pid for pid, name in n.connections().items()
                                if name == f"crdt-ops {target.replica_id}"]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no connection of {target.replica_id} to close")
                time.sleep(0.5)
            for pid in pids:
                n.ctl("close_connection", pid, "crdt-ops chaos closes this connection")
        else:
            raise ValueError(f.kind)

    def _cut_once(self, writer: LedgerReplica, cut: list[str]) -> list[str]:
        """Unbind ``cut`` from the group's exchange, have ``writer`` issue :data:`CUT_OPS`
        more operations and wait for them to be published; returns those of ``cut`` bound
        again by then."""
        asyncio.run(_bind(self.node.url, "crdt.chaos", cut, bind=False))
        before = int(writer.report().get("issued", 0))
        writer.signal(signal.SIGUSR1)
        self._await_report(writer, f"{CUT_OPS} more operations issued",
                           lambda r: int(r.get("issued", 0)) >= before + CUT_OPS)
        time.sleep(1)  # and published, and confirmed
        return bound(self.node, "crdt.chaos", cut)

    def _faults(self) -> None:
        total = self.opts.ops
        try:
            rush = False  # (--rush-from: the faults after that one wait for nothing)
            for f in SCHEDULE:
                while self.issued_now < f.at * total and not rush:
                    if self.abort.wait(0.1):
                        return
                target = self._target(f)
                who = f" {target.replica_id}" if target is not None else ""
                self.say(f"fault {len(self.faults_done) + 1}/{len(SCHEDULE)}: "
                         f"{f.kind}{who} (at {self.issued_now:,} issued)")
                self._fault(f)
                self.faults_done.append(f.kind)
                self.last_fault_end = time.monotonic()
                self.say(f"fault {f.kind}{who} done")
                rush = rush or f.kind == getattr(self.opts, "rush_from", None)
        except Exception as e:
            self.fault_error = f"{type(e).__name__}: {e}"
            self.last_fault_end = time.monotonic()
            self.say(f"fault failed: {self.fault_error}")

    # ------------------------------------------------------------ watching

    def _sample(self) -> list[dict[str, Any]]:
        reports = [p.report() for p in self.procs]
        self.issued_now = sum(int(r.get("issued", 0)) for r in reports)
        for p, r in zip(self.procs, reports, strict=True):
            self.max_buffered[p.replica_id] = max(self.max_buffered.get(p.replica_id, 0),
                                           int(r.get("buffered", 0)))
        return reports

    def await_stability(self, within_s: float) -> None:
        """Wait, at most ``within_s`` seconds, until every replica still in the group has
        all it delivered causally stable: a replica learns what the others have from their
        clock reports, which reach the late replica through the relay's delays, so its
        stability trails convergence by up to a delay and a heartbeat."""
        with contextlib.suppress(AssertionError):  # (one still behind is reported so)
            wait_until(lambda: all(int(r.get("stable", 0)) >= sum(r.get("clock", {}).values())
                                   for r in self._sample() if not r.get("left")),
                       within_s, "what every replica delivered to be causally stable")

    @staticmethod
    def converged(reports: list[dict[str, Any]]) -> bool:
        """Every replica done; the ones still in the group (not ``left``) with nothing
        buffered or unpublished, the same clock and state, ``joiner`` a member and
        ``leaver`` retired there."""
        if not all(r.get("done") for r in reports):
            return False
        staying = [r for r in reports if not r.get("left")]
        if not all(not r.get("buffered") and not r.get("outbox") and r.get("member")
                   and LEAVER in r.get("retired", ()) for r in staying):
            return False
        return all(r["state"] == staying[0]["state"] and r["clock"] == staying[0]["clock"]
                   for r in staying)

    def _progress(self, reports: list[dict[str, Any]]) -> None:
        each = " ".join(f"{p.replica_id}={r.get('issued', 0):,}/buf {r.get('buffered', 0)}"
                        f"/out {r.get('outbox', 0)}"
                        for p, r in zip(self.procs, reports, strict=True))
        relay = (f" relay in={self.relay.relayed_in:,} out={self.relay.relayed_out:,}"
                 if self.relay else "")
        self.say(f"issued {self.issued_now:,}/{self.opts.ops:,} faults "
                 f"{len(self.faults_done)}/{len(SCHEDULE)} | {each}{relay}")

    def run(self) -> tuple[bool, float | None]:
        """Inject the faults while watching; then wait for convergence. Returns
        (converged, the time it was seen)."""
        faults = threading.Thread(target=self._faults, name="chaos-faults", daemon=True)
        faults.start()
        last_print = 0.0
        deadline: float | None = None
        while True:
            reports = self._sample()
            now = time.monotonic()
            if self.workload_end is None and all(r.get("done") for r in reports):
                self.workload_end = now
            if now - last_print >= 2:
                self._progress(reports)
                last_print = now
            if not faults.is_alive():
                if self.converged(reports):
                    self._progress(reports)
                    return True, now
                if deadline is None:
                    deadline = now + self.opts.timeout
                    self.say(f"faults over; waiting up to {self.opts.timeout:g}s to converge")
                elif now > deadline:
                    return False, None
            for p in self.procs:
                if p.exited():
                    self.say(f"replica {p.replica_id} exited ({p.returncode}):\n{p.tail(2000)}")
                    self.abort.set()
                    faults.join()
                    return False, None
            time.sleep(0.25)


def _counts(reports: dict[str, dict[str, Any]], key: str) -> str:
    """``key``'s count in each replica's final report that has one, or "none"."""
    return ", ".join(f"{rid} {r[key]}" for rid, r in reports.items() if r.get(key)) or "none"


def run_chaos(opts: argparse.Namespace) -> int:
    """The whole run; prints the summary and the last line on stdout."""
    def say(text: str) -> None:
        print(f"chaos [{time.monotonic() - chaos.t0:7.1f}s] {text}", file=sys.stderr,
              flush=True)

    for name in ("aiormq", "aio_pika"):  # the relay's reconnects: one line of its own
        logging.getLogger(name).setLevel(logging.CRITICAL)
    chaos = Chaos(opts, say)
    # SIGTERM (e.g. a CI timeout) stops like Ctrl-C: replicas, relay and broker are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        chaos.start()
        converged, seen = chaos.run()
        if converged:
            chaos.await_stability(STABLE_WAIT_S)
        for p in chaos.procs:
            p.stop(timeout=60)
        reports = {p.replica_id: p.report() for p in chaos.procs}
        states = {rid: r.get("state", {}) for rid, r in reports.items() if not r.get("left")}
        same = bool(states) and all(
            r.get("state") == reports["r0"].get("state")
            and r.get("clock") == reports["r0"].get("clock")
            for r in reports.values() if not r.get("left"))
        converged = converged and same
        verdict = audit({p.replica_id: p.ledger_lines() for p in chaos.procs})
        mismatches = cross_check(verdict, states)
        wall = chaos.elapsed()
        seconds = (seen - chaos.last_fault_end if seen is not None and chaos.last_fault_end
                   else float("nan"))
        print("issued per origin: " + ", ".join(
            f"{r} {n:,} operations ({verdict.workload[r]:,} workload)"
            for r, n in verdict.issued.items()))
        print(f"ledger: durable though write() never returned {verdict.durable_unacked}, "
              f"lost with a killed process or a failed store before accepted "
              f"{verdict.unaccepted}, "
              f"applications voided at restarts {verdict.voided}, phantoms {verdict.phantom}, "
              f"restarts {verdict.restarts}, restores from the store after it failed "
              f"{verdict.restores or '-'}")
        print(f"issued/<id> counters vs ledger: "
              f"{'all equal' if not mismatches else '; '.join(mismatches[:10])}")
        print("max buffered ops seen: " + ", ".join(
            f"{rid} {n:,}" for rid, n in chaos.max_buffered.items()))
        if chaos.relay is not None:
            print(f"late replica r0: relay delivered {chaos.relay.relayed_in:,} messages to it "
                  f"0-{opts.late_max_delay_s:g}s late (up to {chaos.relay.max_held:,} held at "
                  f"once), {chaos.relay.relayed_out:,} from it; max buffered ops seen at r0: "
                  f"{chaos.max_buffered.get('r0', 0):,}")
        print("store failures survived: " + _counts(reports, "store_failures")
              + "; echo lost (topology declared again): " + _counts(reports, "echo_losses")
              + "; messages sent again on request (the stream missed them): "
              + _counts(reports, "resent") + "; relayed for their sender: "
              + _counts(reports, "relayed"))
        print("membership: " + ", ".join(
            f"{rid} {'left' if r.get('left') else 'member' if r.get('member') else 'NOT a member'}"
            f" (retired: {', '.join(r.get('retired', ())) or '-'})" for rid, r in reports.items()))
        print("causally stable at the end (operations, of all delivered): " + ", ".join(
            f"{rid} {r.get('stable', 0):,}/{sum(r.get('clock', {}).values()):,}"
            for rid, r in reports.items() if not r.get("left")))
        for a in verdict.anomalies[:20]:
            print(f"anomaly: {a}")
        if chaos.fault_error:
            print(f"fault failed: {chaos.fault_error}")
        print(f"faults: {', '.join(chaos.faults_done)}; wall time {wall:.1f}s")
        marks = {"last fault over": chaos.last_fault_end, "workload issued": chaos.workload_end,
                 "converged": seen}
        print("times (s from start): " + ", ".join(
            f"{what} {'-' if t is None else f'{t - chaos.t0:.1f}'}" for what, t in marks.items()))
        print(f"ops={opts.ops} faults={len(chaos.faults_done)} lost={verdict.lost} "
              f"applied_twice={verdict.applied_twice} "
              f"converged={'true' if converged else 'false'} seconds={seconds:.1f}", flush=True)
        ok = (converged and verdict.lost == 0 and verdict.applied_twice == 0
              and verdict.phantom == 0 and not verdict.anomalies and not mismatches
              and len(chaos.faults_done) == len(SCHEDULE))
        if not ok:
            for p in chaos.procs:
                print(f"--- {p.replica_id} log tail ---\n{p.tail(2000)}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        chaos.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``crdt-ops chaos`` (registered by :mod:`tools.commands`)."""
    p.add_argument("--ops", type=int, default=50_000, help="operations, all replicas together")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=60,
                   help="seconds over which the operations are issued (sets the rate)")
    p.add_argument("--pause-s", type=float, default=20, help="how long a replica is SIGSTOPped")
    p.add_argument("--lock-s", type=float, default=10,
                   help="how long a replica's store is locked (BEGIN EXCLUSIVE)")
    p.add_argument("--per-write", type=int, default=10, help="operations per write() block")
    p.add_argument("--late-replica", action="store_true",
                   help="deliver r0's input late and out of order through a relay")
    p.add_argument("--late-max-delay-s", type=float, default=2.0,
                   help="the relay delays each message by 0 to this many seconds")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds to wait for convergence after the last fault")
    p.add_argument("--keep-dir", type=Path, default=None,
                   help="work in this directory and keep it (stores, ledgers, logs)")
    p.add_argument("--rush-from", choices=[f.kind for f in SCHEDULE], default=None,
                   metavar="FAULT",
                   help="after this fault, start each fault as soon as the one before it is "
                        "over, whatever was issued (e.g. topology-delete: the broker-kill then "
                        "comes within a second or so of the exchange's deletion)")
    p.set_defaults(func=lambda args: _main(p, args))


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.replicas < 4:
        parser.error("--replicas must be at least 4 (a late one, a killed one, one whose "
                     "connection is closed, a paused one)")
    if args.ops < args.replicas or args.duration <= 0:
        parser.error("--ops must be at least --replicas, and --duration positive")
    return run_chaos(args)
