"""Pump a durable replica (:mod:`crdt_ops.transport.durable`) through RabbitMQ (aio-pika).

The group's exchanges and queues are declared as in :mod:`crdt_ops.transport.topology`;
the connection fails over as in :mod:`~crdt_ops.transport.amqp.connection`; the stream is
read to join and to fill gaps as in :mod:`~crdt_ops.transport.amqp.recovery`; deliveries
are authenticated as in :mod:`crdt_ops.transport.auth`.

Guarantees:
- a local write is applied at once and is *accepted* when ``flush()`` (or the
  ``write()`` block) returns: it is then in the store's outbox, and it is
  published, again after any restart or reconnect, until the broker confirms it;
- a delivered message is applied and logged in the store in one transaction
  before it is acked: after a crash it is redelivered and either applied (it
  was not logged) or dropped as a duplicate (it was);
- a message that is not valid is published to the dead-letter exchange with
  its reason in the ``x-crdt-reason`` header, then acked; the consumer goes on;
- a message the causal buffer cannot hold (``gap-cap``: its origin already has
  ``max_waiting_per_origin`` operations waiting; ``buffer-full``: the buffer is at
  its bound) is dead-lettered the same way, and the stream is read again after
  the gap timeout: the stream holds everything published to the group, so a
  legitimate message dropped there is applied from it (see ``_gap_watch``);
- nothing here blocks a write on the broker: writes go on while it is down;
- membership (:mod:`crdt_ops.membership`): a new replica binds its queue, replays
  the stream up to its marker, then becomes a member before :meth:`AmqpNode.start`
  returns: if the group has no member yet it publishes a founding claim to the
  exchange ``crdt.G.founder`` and founds the group if its claim is the first in the
  stream ``crdt.G.founders`` (:mod:`~crdt_ops.transport.amqp.founding`); otherwise it
  sends join requests until a member's admission reaches it. A retired replica refuses
  to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from crdt_ops.clock import few
from crdt_ops.errors import Deposed, OwnPastMissing
from crdt_ops.policy import OPEN, WritePolicy, belongs
from crdt_ops.replica import Replica
from crdt_ops.subgroups import NONE, SubGroups, split
from crdt_ops.transport import metrics
from crdt_ops.transport.amqp.connection import FailoverConnection, redact_urls, retrying
from crdt_ops.transport.amqp.consumer import Consumer
from crdt_ops.transport.amqp.founding import claim_founding
from crdt_ops.transport.amqp.holder import Holder
from crdt_ops.transport.amqp.inbound import Inbound, stored_offset
from crdt_ops.transport.amqp.publisher import Publisher
from crdt_ops.transport.amqp.recovery import (
    REREAD_DUE,
    GapWatch,
    PastTheEnd,
    last_operation,
    read_stream,
)
from crdt_ops.transport.amqp.retake import Reader, RetakeCheck
from crdt_ops.transport.amqp.stream_consumer import STREAM_OFFSET, StreamConsumer
from crdt_ops.transport.amqp.stream_ready import StreamGate, StreamUnchecked, link_of
from crdt_ops.transport.auth import authenticator, may_relay, message, signer_of
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.echo import EchoWatch
from crdt_ops.transport.loop_lag import LoopLag
from crdt_ops.transport.relay import Relayer
from crdt_ops.transport.resend import Resender
from crdt_ops.transport.store import Store, StoreUnavailable
from crdt_ops.transport.topology import Topology, bind_member, declare, declare_member
from crdt_ops.transport.waiting import jittered

log = logging.getLogger(__name__)

#: How often the node settles what causal stability released (seconds; see ``_settle``),
#: while deliveries arrive; and while none did since the last time (stability advances
#: only with what is received: a wake-up then is CPU spent for nothing).
SETTLE_EVERY_S = 0.25
SETTLE_IDLE_S = 1.0
#: A replica that writes between every two heartbeat ticks still sends a heartbeat (its
#: whole clock) every this many ticks (:meth:`AmqpNode._heartbeat`).
BEAT_AT_LEAST_EVERY = 5
#: Seconds before its last commit of its own messages from which a replica that reads a
#: queue of its own reads the group's stream again when it starts
#: (:meth:`AmqpNode._setup`): the broker stamps the stream's chunks by its clock, the
#: store those commits by this machine's, and the two may differ by about this much.
RESUME_MARGIN_S = 10.0
#: Seconds between two attempts to consume the stream again (``consume="stream"``) while
#: one fails (a channel not reopened yet after a reconnection).
CONSUME_RETRY_S = 0.1
#: A retiring replica (:meth:`AmqpNode.leave`) stays up until every member reported having
#: its operations, at most this many gap timeouts (and at least :data:`LEAVE_WAIT_MIN_S`):
#: a member whose stream re-read lacks some of them asks it for them meanwhile.
LEAVE_WAIT_GAP_TIMEOUTS = 3
LEAVE_WAIT_MIN_S = 30.0
#: Seconds a stopping node waits, while connected, for the broker to confirm what its
#: outbox holds (a stop does not wait for more: what is left goes out at the next start).
STOP_DRAIN_S = 2.0
#: Seconds a stopping node waits for the broker to cancel its consumer (a link that is
#: down does not answer; closing the connection drops the consumer anyway).
STOP_CANCEL_S = 1.0
#: Seconds a stopping node waits for each of its tasks to end once cancelled, and for its
#: connection to close: a task that swallowed its cancellation (``asyncio.wait_for`` can,
#: on Python 3.11: gh-86296), or a close the broker does not answer, would hold the stop
#: for good. Past it, the stop says so in one line and goes on.
STOP_WAIT_S = 10.0
#: Seconds before a new attempt at a sole principal's reading of its streams after a
#: reconnection that failed while connected (:mod:`~crdt_ops.transport.amqp.retake`),
#: first and at most.
RETAKE_RETRY_S = (0.5, 5.0)
#: Seconds between two attempts to retire the deposed replica this one replaces.
RETIRE_REPLACED_RETRY_S = 1.0


class AmqpNode:
    """One replica of a group, kept durable in SQLite and replicated through RabbitMQ.

    ``async with AmqpNode(settings) as node:`` runs :meth:`start` on entry and
    :meth:`stop` on exit. ``node.replica`` is the :class:`~crdt_ops.replica.Replica`
    (read it, subscribe to it, write through :meth:`write`), ``node.replica_id`` its
    id (``settings.replica_id``, else the one remembered in the store, else a new
    ``<name>.<host>-<random>``), ``node.settings`` the :class:`~crdt_ops.transport.config.Settings`
    and ``node.store`` the :class:`~crdt_ops.transport.store.Store` (default file:
    ``crdt-ops.<group>.<replica id or name>.sqlite``). ``policy``: the group's write
    policy (the same at every replica). The node opens its store with
    :meth:`DurableReplica.open <crdt_ops.transport.durable.DurableReplica.open>` (raising
    ValueError when the store belongs to another replica id or was made with the other
    ``membership`` mode, :class:`~crdt_ops.transport.store.StoreLocked` when another
    process has it open), or pumps ``durable``, one opened by the caller. ``loop_lag``:
    the probe of the event loop's stalls to start with the node, shared by the nodes of
    one process (:class:`~crdt_ops.transport.loop_lag.LoopLag`; by default its own).
    ``subgroups``: the group's sub-group rule (:mod:`crdt_ops.subgroups`, the same at every
    replica): its replicas publish through the group's topic exchange, and a replica that
    holds one sub-group reads a queue the broker routes that sub-group's messages and the
    common part's to only (:mod:`crdt_ops.transport.topology`; with ``consume="stream"``
    it reads the whole stream and skips the rest). ``sole``: a queue name to hold
    exclusively beside the replica's own holder queue, the one process at a time that
    runs a role (:class:`~crdt_ops.transport.amqp.holder.Holder`); a second process waits
    in :meth:`start` until the first stops. A process that finds it taken after a
    reconnection was deposed (:attr:`sole_lost`): it publishes nothing more, and its store
    is marked so. Opened again, a deposed store is set aside, and the replica starts with
    a new one, retiring the old id once a member if it has a new one
    (:mod:`crdt_ops.transport.deposition`). ``deposed_id``: set aside this replica's store
    if it belongs to that id (another store of the process was:
    :class:`~crdt_ops.transport.amqp.groups.AmqpGroups`). ``principal``: the sole principal
    ``sole`` is the holder queue of (``logic``): a used store whose resumed read of the
    stream shows operations of another replica of it, while its outbox holds operations it
    never sent, is deposed as the node starts (:meth:`start` raises
    :class:`~crdt_ops.errors.Deposed`): that other process decided without them.
    """

    def __init__(self, settings: Settings, *, name: str = "replica",
                 wall_clock: Callable[[], int] = time.time_ns, policy: WritePolicy = OPEN,
                 durable: DurableReplica | None = None,
                 loop_lag: LoopLag | None = None, subgroups: SubGroups = NONE,
                 sole: str | None = None, deposed_id: str | None = None,
                 principal: str | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.topology = Topology.of(settings, routed=bool(subgroups))
        self.durable = durable or DurableReplica.open(settings, name=name,
                                                      wall_clock=wall_clock, policy=policy,
                                                      subgroups=subgroups,
                                                      deposed_id=deposed_id)
        self.replica_id = self.durable.replica_id
        metrics.announce(self.replica_id, settings.group)
        #: stops reporting this node's health at /healthz on the metrics port (start())
        self._unwatch: Callable[[], None] = lambda: None
        #: A connection to use instead of opening one (several groups in one process,
        #: :mod:`~crdt_ops.transport.amqp.groups`): set before :meth:`start`; the node
        #: opens its channels on it and leaves it open when it stops.
        self.shared_connection: AbstractRobustConnection | None = None
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._url_index = 0  # the URL to try first (several: nodes of one cluster)
        self._lost_at: float | None = None  # when the connection was lost (monotonic)
        self._holder = Holder(self.topology, self.replica_id, sole)
        self._principal = principal
        #: set by :class:`~crdt_ops.transport.amqp.groups.AmqpGroups`: the nodes of one
        #: process start pumping (their outboxes sent) once every one of them passed its
        #: start's checks (:meth:`_refuse_if_superseded` in each group)
        self.set_up: asyncio.Barrier | None = None
        #: called once, in order, when this process is deposed (:meth:`depose`); the
        #: first marks the store deposed
        self.on_deposed = self._holder.on_deposed
        self.on_deposed.append(self.durable.depose)
        self._buffer_since: float | None = None
        #: since when the replica has held operations waiting (None: it holds none)
        self._held_since: float | None = None
        self._gaps = GapWatch(settings.gap_timeout_s, last_reread=time.monotonic())
        self._signer = signer_of(settings)
        self._auth = authenticator(settings)
        self._lag_observed = 0.0
        self._retired_said = False
        self._publish_stalled = False  # said that the broker has not confirmed for long
        self._echo = EchoWatch(self.replica_id, uuid.uuid4().hex[:8])
        #: Seconds our queue has been silent while our confirmed messages await their
        #: echo, once that passed the patience (see :meth:`_echo_watch`); else 0.
        self.echo_silent_s = 0.0
        self._redeclare_due = False
        #: the topology was missing while the group published: what our queue missed
        #: meanwhile (a retirement, a heartbeat: nothing a gap would reveal) is in the stream
        self._reread_due = False
        self._echo_tick = time.monotonic()
        self._narrow = False  # a broker user that may not declare the shared topology
        #: the event loop's stalls since start() (crdt_ops.transport.loop_lag; the nodes of
        #: one process may share one: ``loop_lag``)
        self.loop_lag = loop_lag or LoopLag(self.replica_id)
        #: the consumer of this replica's queue, or (``consume="stream"``) of the group's
        #: stream, read on from the offset logged last (stream_consumer.py: then it is
        #: :attr:`_stream_in` too); made again on :attr:`_consume_due` (a reconnection, a
        #: store failure, a cancel by the broker)
        self._consumer: Consumer | None = None
        self._consume_channel: AbstractChannel | None = None
        self._consume_due = asyncio.Event()
        self._consume_failed = 0  # attempts to consume the stream that failed in a row
        self._in = Inbound(self.durable, settings, self._auth, self._echo, self._observe,
                           self._arrived,
                           self._consume_due.set if settings.consume == "stream" else None)
        self._arrivals = 0  # batches delivered since this process started
        self._arrivals_settled = 0  # ... as of the last settling
        #: publishing only where the stream took a probe; the probe is this replica's
        #: heartbeat, through the group's exchange (every replica gets it too; a service
        #: user may not write to the stream directly)
        self._gate = StreamGate(
            lambda: self._conn, self.topology.stream,
            lambda mid: message(self.settings, self._clock_message(), self._signer,
                                message_id=mid),
            via=self.topology.exchange, hold=self._hold,
            to_stream=self.topology.stream_exchange)
        #: a sole principal's check, after a reconnection, that no other process of it
        #: wrote meanwhile (:mod:`~crdt_ops.transport.amqp.retake`); one for every group
        #: of a process (:class:`~crdt_ops.transport.amqp.groups.AmqpGroups` shares the
        #: first node's)
        self.retake: RetakeCheck | None = None
        if principal is not None:
            self.retake = RetakeCheck(self.replica_id, principal, self.depose)
            self.retake.readers.append(self.retake_reader())
        self._clock_at_cut: dict[str, int] | None = None  # (see _others_since_cut)
        self._started_once = False  # passed its start's checks (later: reconnections)
        self._link_alive_wall = 0.0  # a time.time() at which the broker answered on it
        self._out = Publisher(self.durable, settings, self.topology, self._echo, self._signer,
                              self._redeclare_and_reread, self._topology_lost, self._gate)
        #: sends again what peers ask for (the stream missed it), prunes what all have
        self._resender = Resender(self.durable, settings.gap_timeout_s)
        #: sends again what peers ask other senders for, when those do not
        self._relayer = (Relayer(self.durable, settings.gap_timeout_s, settings.heartbeat_s)
                         if may_relay(settings) else None)
        if self._relayer is None and self.durable.store.drop_relayed():
            log.warning("replica %s: dropped the messages it was to relay for others: with "
                        "these --auth settings its peers would refuse them", self.replica_id)
        self.echo_losses = 0  # times our echo stopped (since this process started)
        #: heartbeats sent since this process started (:meth:`_heartbeat`)
        self.heartbeats = 0
        #: our last operation's number at the last heartbeat tick (the first tick beats
        #: unless we wrote since we started)
        self._own_at_tick = self.replica.own_seq
        self._skipped = 0  # heartbeat ticks skipped in a row

    # ------------------------------------------------------------ the durable replica

    @property
    def replica(self) -> Replica:
        """The :class:`~crdt_ops.replica.Replica` (replaced in place, never swapped, when
        memory is restored from the store)."""
        return self.durable.replica

    @property
    def store(self) -> Store:
        return self.durable.store

    @property
    def store_failure(self) -> StoreUnavailable | None:
        """The store's last failure while it fails, else None."""
        return self.durable.store_failure

    @property
    def store_failures(self) -> int:
        """Times the store failed since this process started."""
        return self.durable.store_failures

    @property
    def on_committed(self) -> list[Callable[[int], None]]:
        """Called with this replica's last own sequence number each time its own
        operations up to it were committed to the outbox (durable)."""
        return self.durable.on_committed

    @property
    def on_restored(self) -> list[Callable[[dict[str, int]], None]]:
        """Called with the clock memory was restored to from the store after a store
        failure (what memory held beyond it is gone)."""
        return self.durable.on_restored

    async def store_works(self) -> None:
        """Return once the store takes writes (at once when it has not failed): after a
        :class:`StoreUnavailable`, memory was restored from the store by then."""
        await self.durable.store_works()

    def write(self) -> contextlib.AbstractAsyncContextManager[Replica]:
        """``async with node.write() as r: r.counter("x").increment()``: the
        operations are applied at once and accepted (durable) when the block exits.

        Raises :class:`~crdt_ops.transport.store.StoreUnavailable` when the store fails (on
        entry while it is failing, or at the end): then none of the block's
        operations is accepted, and memory is restored from the store (they are
        gone) before any other write or delivery is taken. Raises RuntimeError if this node
        was stopped.

        An exception raised inside the block does not undo the operations applied before
        it (an operation-based replica applies each one as it is made): they stay
        applied, and go out with the next commit."""
        self._refuse_stopped()
        self.loop_lag.busy()
        return self.durable.write()

    async def flush(self) -> None:
        """Wait until every local operation applied so far is in the outbox. Raises
        :class:`~crdt_ops.transport.store.StoreUnavailable` if the store is failing or fails."""
        if self.replica.unsent:
            self.loop_lag.busy()
        await self.durable.flush()

    def snapshot(self) -> None:
        """Write a snapshot and drop the log it covers (see
        :meth:`DurableReplica.snapshot <crdt_ops.transport.durable.DurableReplica.snapshot>`)."""
        self.durable.snapshot()

    def health(self) -> dict[str, str]:
        """What works, by part, each ``"ok"`` or what is wrong, in words:

        * ``broker``: connected (else since when it is not, and that it reconnects);
        * ``membership``: this replica is a member of its group (else joining:
          replaying the stream, or waiting to be admitted; or retired);
        * ``delivery``: no operation has waited for an earlier one (a gap: a sender's
          operations missing here) for longer than ``3 x gap_timeout_s``, by which
          time the gap watch should have re-read them (else who is missing what);
        * ``store``: the store takes writes (else its error);
        * ``publish``: no message of this replica has waited longer than ``gap_timeout_s``
          for the broker's confirm (else how many, and for how long: the broker blocks
          publishers, a memory or disk alarm, or the connection is down);
        * ``echo``: our messages come back through our queue (else for how long not).

        A service that is not all ``"ok"`` cannot do its whole job: ``/healthz``
        answers 503 then."""
        r, now = self.replica, time.monotonic()
        if self._conn is None:
            broker = f"connecting to {redact_urls(self.settings.amqp_url)}"
        elif self._lost_at is not None:
            broker = (f"lost the broker {now - self._lost_at:.0f}s ago; reconnecting "
                      f"to {redact_urls(self.settings.amqp_url)}")
        else:
            broker = "ok"
        if self.replica_id in r.membership.retired:
            membership = "retired from the group: it writes no more"
        elif r.membership.is_retiring(self.replica_id):
            membership = ("retiring from the group: it writes no more, and the others count "
                          "it out once they all know")
        elif not r.is_member:
            membership = "joining: replaying the stream, then waiting to be admitted"
        else:
            membership = "ok"
        stuck = 0.0 if self._buffer_since is None else now - self._buffer_since
        delivery = "ok"
        if stuck > 3 * self.settings.gap_timeout_s:
            delivery = (f"{r.buffered} operations have waited {stuck:.0f}s for earlier ones "
                        f"missing here: {few(r.missing())}")
        return {"broker": broker, "membership": membership, "delivery": delivery,
                "store": "ok" if self.store_failure is None else str(self.store_failure),
                "publish": self._publish_health(now),
                "echo": "ok" if not self.echo_silent_s else
                f"none of this replica's messages came back through its "
                f"{'stream consumer' if self._stream_in else 'queue'} for "
                f"{self.echo_silent_s:.0f}s; declaring the topology again"}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (retrying with backoff), declare the topology, start pumping, and
        return once this replica is a member of its group (see the module docstring).
        Raises ValueError if this replica was retired (known from its store, or from
        the stream it replayed: then it stops before writing anything new), RuntimeError
        if this node was stopped (its store is closed: make a new node)."""
        self._refuse_stopped()
        self._refuse_if_retired()
        self.durable.commit()  # anything restored as unsent
        await self._connect()
        self._started_once = True  # (a reconnection from now on: RetakeCheck)
        if self.set_up is not None:
            await self.set_up.wait()
        loop = asyncio.get_running_loop()
        steps = [self.durable.flusher, self._out.run, self._in.run, self._heartbeat,
                 self._gap_watch, self._echo_watch, self._settle]
        if self._consumer is not None:
            steps.append(self._follow)
        for step in steps:
            self._tasks.append(loop.create_task(self._forever(step)))
        self.durable.pumping = True
        self.durable.outbox_ready.set()
        self.loop_lag.start()
        self._unwatch = metrics.watch_health(self.replica_id, self.settings.group, self.health)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        await self._become_member()
        for old in self.durable.replaces:
            self._tasks.append(loop.create_task(self._retire_replaced(old)))

    async def _retire_replaced(self, old: str) -> None:
        """Retire ``old``, the deposed replica whose store was set aside for this one
        (:mod:`~crdt_ops.transport.deposition`): its last operation in the stream is the
        last anyone has, and stability stops waiting for it after that; then delete its
        queue, if it had one (nobody consumes it again, and it would fill for good). Tried
        again every :data:`RETIRE_REPLACED_RETRY_S` until it is done (a lost connection;
        the store, as elsewhere)."""
        while True:
            try:
                await self.retire(old)
                await self._delete_queue_of(old)
                self.durable.replaced_retired(old)
                break
            except StoreUnavailable as e:
                self.durable.store_failed(e)
                await self.durable.store_ok.wait()
            except Exception as e:
                log.info("replica %s: retiring %s, the deposed replica it replaces, failed "
                         "(%s: %s); trying again in %.0fs", self.replica_id, old,
                         type(e).__name__, e, RETIRE_REPLACED_RETRY_S)
                await asyncio.sleep(RETIRE_REPLACED_RETRY_S)
        log.info("replica %s retired %s, the deposed replica whose store was set aside for "
                 "it: what %s committed and never sent stays unsent", self.replica_id, old,
                 old)

    async def _delete_queue_of(self, replica_id: str) -> None:
        """Delete ``replica_id``'s queue on a channel of its own; one that does not exist
        is no error, one this broker user may not delete is said (an administrator
        deletes it then: ``rabbitmqctl delete_queue``)."""
        assert self._conn is not None
        name = self.topology.queue(replica_id)
        channel = await self._conn.channel()
        try:
            await channel.queue_delete(name)
        except aiormq.exceptions.ChannelAccessRefused:
            log.warning("replica %s may not delete %s, the queue of the deposed replica it "
                        "replaced: delete it, or it fills for good", self.replica_id, name)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def depose(self) -> None:
        """Take this process for deposed (:mod:`~crdt_ops.transport.deposition`): from now
        on it publishes nothing (the connection in use is probed again before the next
        publish, and the holder, deposed, never lets it: a publish already handed to the
        socket may still go), :attr:`sole_lost` is set, and :attr:`on_deposed` is called
        (its first hook marks the store). Done by the node itself when another process
        took over its ``sole`` queue while it was cut off, or when its start finds that
        another ran (:meth:`_refuse_if_superseded`). Idempotent."""
        self._holder.depose()
        self._gate.forget()  # (a connection already probed: its next publish probes again,
        # and the holder, deposed, never lets it)

    async def _become_member(self) -> None:
        """Found the group (no member yet, and the broker accepted this replica's
        founding claim) or ask to be admitted, until this replica is a member."""
        r, s = self.replica, self.settings
        if {self.replica_id} & (r.membership.retired | r.membership.retiring_replicas()):
            await self.stop()
            self._refuse_if_retired(replayed=True)
        said = 0.0
        founder_known = False  # the first claim is another's: it stays the first
        while not r.is_member:
            if not r.membership.members() and not founder_known:
                try:
                    founded = await self._claim_founding()
                except Exception as e:  # the connection was lost meanwhile: it reconnects
                    log.warning("replica %s: claiming the founding of group %s failed "
                                "(%s: %s); trying again in 1 s", self.replica_id, s.group,
                                type(e).__name__, e)
                    await asyncio.sleep(1.0)
                    continue
            else:
                founded = False
            if founded:
                r.found()
                log.info("replica %s founded group %s", self.replica_id, s.group)
            else:
                founder_known = True
                r.join()
                if time.monotonic() - said > 10:
                    said = time.monotonic()
                    log.info("replica %s asks the members of group %s to admit it",
                             self.replica_id, s.group)
            await self.durable.store_works()  # (a failed store commits nothing)
            self.durable.commit()
            for _ in range(int(max(s.heartbeat_s, 0.2) / 0.1)):
                if r.is_member:
                    break
                await asyncio.sleep(0.1)
        await self.flush()

    def _refuse_if_retired(self, replayed: bool = False) -> None:
        m = self.replica.membership
        if replayed or self.replica_id in m.retired:
            raise ValueError(f"replica {self.replica_id} was retired from group "
                             f"{self.settings.group}"
                             f"{' (its retirement is in the stream)' if replayed else ''}; "
                             "a retired replica never comes back: start a new one (another "
                             "--store and --replica-id)")

    async def _claim_founding(self) -> bool:
        """Whether this replica's founding claim is the group's first
        (:func:`~crdt_ops.transport.amqp.founding.claim_founding`)."""
        assert self._conn is not None
        return await claim_founding(self._conn, self.settings, self.replica_id, self._signer)

    async def _forever(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` in a loop; an error is logged and the loop goes on after a pause."""
        pause, what = 0.1, _step_name(step)
        while True:
            try:
                await step()
                pause = 0.1
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # aiormq cancels a publish whose connection got stuck: an error, not a stop
                log.warning("replica %s of group %s: %s was interrupted by a lost connection",
                            self.replica_id, self.settings.group, what)
                await asyncio.sleep(pause)
            except StreamUnchecked as e:  # reconnected: the next step probes the stream first
                log.info("replica %s of group %s: %s: %s", self.replica_id, self.settings.group,
                         what, e)
            except StoreUnavailable as e:  # logged once by store_failed; retried there
                self.durable.store_failed(e)
                await self.durable.store_ok.wait()
            except Exception as e:
                if self._link_down():  # said once by _on_lost; no traceback per step
                    log.info("replica %s of group %s: %s was interrupted by the lost connection "
                             "(%s: %s); going on in %.1fs", self.replica_id, self.settings.group,
                             what, type(e).__name__,
                             str(e).splitlines()[0][:200] if str(e) else "", pause)
                else:
                    log.exception("replica %s of group %s: %s failed; going on in %.1fs",
                                  self.replica_id, self.settings.group, what, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _link_down(self) -> bool:
        """Whether the connection to the broker is down now (lost and not back yet)."""
        if self._lost_at is not None or self._conn is None:
            return True
        link = link_of(self._conn)
        return link is None or link.is_closed

    def _refuse_stopped(self) -> None:
        if self._stopped:
            raise RuntimeError(f"replica {self.replica_id} was stopped and its store closed: "
                               "make a new node (AmqpNode(settings)) to start it again")

    async def stop(self) -> None:
        """Commit pending writes, stop the tasks, close the connection and the store.
        Stopping a stopped node does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._unwatch()
        self.durable.commit_before_stop()
        with contextlib.suppress(StoreUnavailable):
            await self._drain(STOP_DRAIN_S)
        self.durable.pumping = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            await self._ended(f"its task {t.get_name()}", asyncio.wait({t}))
            if t.done() and not t.cancelled():
                t.exception()  # (retrieved: what it raised is the stop's to ignore)
        self._tasks.clear()
        await self._out.stop_rounds()
        if self._consumer is not None:  # stopped, not gone: no line, no consuming again
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_CANCEL_S):  # (a link that is down)
                    await self._consumer.cancel()
        if self.loop_lag.running:
            worst = await self.loop_lag.stop()
            if not self.loop_lag.running:  # its last user: said once per process
                log.info("replica %s: its event loop's worst stall was %.1f ms, %.0fs after "
                         "its start", self.replica_id, 1000 * worst, self.loop_lag.worst_at)
        if self._conn is not None and self._conn is self.shared_connection:
            self._conn.reconnect_callbacks.discard(self._on_reconnect)
            self._conn.close_callbacks.discard(self._on_lost)
        elif self._conn is not None:
            await self._ended("closing its connection", self._conn.close())
        await self.durable.close()

    async def _drain(self, wait_s: float, through_outages: bool = False) -> None:
        """Wait at most ``wait_s`` for the broker to confirm every message of the outbox,
        while the node runs and was not deposed, and (unless ``through_outages``: a
        replica that leaves) while it is connected. A stop waits so (:data:`STOP_DRAIN_S`):
        a process that stops with its own operations unconfirmed is deposed at its next
        start if another of its principal ran meanwhile
        (:mod:`~crdt_ops.transport.deposition`), though the group may have them; and a
        peer waits for them until then."""
        if not self._tasks or self._holder.sole_lost.is_set():
            return
        deadline = time.monotonic() + wait_s
        while ((through_outages or not self._link_down()) and time.monotonic() < deadline
               and self.store.unconfirmed(limit=1)):
            self.durable.outbox_ready.set()
            await asyncio.sleep(0.02)

    async def _ended(self, what: str, step: Awaitable[object]) -> None:
        """Await ``step`` of a stop (its failures are the stop's to ignore) at most
        :data:`STOP_WAIT_S`; past it, say so and go on."""
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await step
        except TimeoutError:
            log.error("replica %s: stopping, %s did not end within %.0fs; going on without "
                      "it", self.replica_id, what, STOP_WAIT_S)
        except Exception:  # (a close on a link that is down: the stop goes on)
            pass

    async def __aenter__(self) -> AmqpNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connect(self) -> None:
        """Connect and set up, retrying the whole of it with backoff until it works."""
        s = self.settings
        async for attempt in retrying(f"join group {s.group}", s.amqp_url):
            with attempt:
                try:
                    await self._setup()
                except BaseException:
                    if self._conn is not None and self._conn is not self.shared_connection:
                        with contextlib.suppress(Exception):
                            await self._conn.close()
                    self._conn = None
                    self._url_index += 1  # several URLs: the next attempt tries the next one
                    raise

    async def _setup(self) -> None:
        s, names = self.settings, self.topology
        conn = self.shared_connection or await FailoverConnection.of(s, self.replica_id,
                                                                     self._url_index)
        self._conn = conn
        self._conn.reconnect_callbacks.add(self._on_reconnect)
        self._conn.close_callbacks.add(self._on_lost)
        # first: one process at a time runs this replica, and what an earlier one sent is
        # routed before this one declares, reads or sends anything
        await self._holder.hold(conn)
        self._pub = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        consume = self._consume_channel = await self._conn.channel()
        await consume.set_qos(prefetch_count=s.prefetch)
        try:
            await self._declare_shared(self._pub)
        except aiormq.exceptions.ChannelAccessRefused:
            # a narrow broker user (deploy/make_definitions.py): an administrator
            # provisioned the group's exchanges and stream; use them as they are
            log.info("user %s may not declare %s's exchanges and stream; using them as "
                     "provisioned", s.user, names.exchange)
            self._narrow = True
            self._pub = await self._conn.channel(publisher_confirms=True,
                                                 on_return_raises=True)
            self._attach(self._pub, await self._pub.get_exchange(names.exchange),
                         await self._pub.get_exchange(names.dead_letter_exchange),
                         await self._pub.get_exchange(names.routed_exchange)
                         if names.routed else None)
        was = self.store.get("consume")
        if was is not None and was.decode() != s.consume:
            log.info("replica %s consumed by %s before, by %s now", self.replica_id,
                     was.decode(), s.consume)
            # its queue missed what was published while it read the stream: read that too
            self._reread_due = s.consume == "queue"
        if s.consume == "queue":
            self._queue = await declare_member(consume, names, self.replica_id,
                                               self.replica.held_subgroup)
        elif self.replica.held_subgroup is not None and names.routed:
            log.info("replica %s holds sub-group %s of %s but reads its whole stream "
                     "(--consume stream): the broker filters only for --consume queue",
                     self.replica_id, self.replica.held_subgroup, s.group)
        if self.store.get("joined") is None:
            await self._replay_stream()
            self._refuse_if_own_past_lost(self.replica.unmet_claims())
            self.store.put("joined", b"1")
        else:
            before = dict(self.replica.clock)
            await self._read_own_past()
            self._refuse_if_superseded(before)
        self.store.put("consume", s.consume.encode())
        if s.consume == "stream":
            self._consumer = StreamConsumer(
                names.stream, self._in.inbox.put_nowait, lambda: stored_offset(self.durable),
                self.replica_id, self._stream_lost)
        else:
            assert self._queue is not None
            self._consumer = Consumer(self._queue.name, self._in.inbox.put_nowait,
                                      self.replica_id, self._queue_lost)
        await self._consumer.consume(consume)

    @property
    def _stream_in(self) -> StreamConsumer | None:
        """The consumer when it reads the group's stream (``consume="stream"``), else
        None."""
        consumer = self._consumer
        return consumer if isinstance(consumer, StreamConsumer) else None

    async def _read_own_past(self) -> None:
        """A replica that starts again with a used store reads back what it sent that its
        store lost (an older copy of the store put back, an OS crash that undid a
        transaction) before it writes again: its next operation then follows those, never
        reuses their sequence numbers. One that reads the stream, from the offset after the
        one it logged; one with a queue of its own, which logs no offset in the stream, from
        a little before its last commit of its own (what its store lost was published
        after that). Then what those messages said it had (:meth:`_claims_back`)."""
        if self.settings.consume == "stream":
            await self._replay_stream(resume=True)
        elif (committed := self.durable.committed_at()) is not None:
            await self._replay_stream(since=datetime.datetime.fromtimestamp(
                committed / 1000 - RESUME_MARGIN_S, tz=datetime.UTC))
        if lost := self.replica.unmet_claims():
            await self._claims_back(lost)

    async def _claims_back(self, lost: dict[str, tuple[int, int]]) -> None:
        """Its own messages read back told the group of operations its store lost (the
        deliveries of a transaction undone after what it sent was published): read the
        whole stream, so that it has them again before it writes
        (:meth:`~crdt_ops.replica.Replica.unmet_claims`)."""
        log.warning("replica %s: its store lost operations it had told the group it had (%s); "
                    "reading the group's stream from its start before it writes",
                    self.replica_id, few(lost))
        await self._replay_stream()
        if still := self.replica.unmet_claims():
            log.error("replica %s: the stream no longer holds operations it had told the group "
                      "it had (%s: cut by the stream's retention?); it writes anyway, and its "
                      "next operations may be concurrent with ones its peers took as stable",
                      self.replica_id, few(still))

    def _refuse_if_own_past_lost(self, unmet: dict[str, tuple[int, int]]) -> None:
        """Raise :class:`~crdt_ops.errors.OwnPastMissing` (before anything is written) if
        ``unmet`` (:meth:`Replica.unmet_claims`, after a new store read the stream) names
        operations of this replica's own: it sent them, its store does not have them, and
        the stream no longer holds them (its retention), so its next operations would
        reuse their sequence numbers. (A used store whose claims stay unmet after reading
        the whole stream is said in an error and goes on, as before: in a group without
        authentication a forged message under its own id would otherwise keep it from
        starting for good.)"""
        own = {c: span for c, span in unmet.items() if split(c)[0] == self.replica_id}
        if own:
            raise OwnPastMissing(
                f"replica {self.replica_id} sent operations ({few(own)}) that its store does "
                f"not have (an empty store, or an older copy, under an id that wrote "
                f"before) and that the stream of group {self.settings.group} no longer "
                "holds: its next operations would reuse their sequence numbers, and every "
                "other replica would drop them. Start a new replica in its place (another "
                f"--replica-id and --store), then retire this one: crdt-ops retire "
                f"{self.replica_id} --group {self.settings.group}")

    async def _hold(self, conn: AbstractConnection) -> None:
        """Return once ``conn`` may publish for this replica: it holds the holder queues
        (:meth:`Holder.hold <crdt_ops.transport.amqp.holder.Holder.hold>`) and, on a
        reconnection of a sole principal's process, no other process of the principal
        wrote while it was cut off (:mod:`~crdt_ops.transport.amqp.retake`; else it is
        deposed, and the holder never lets it again: this never returns). Awaited by the
        stream gate on each new connection, before its probe."""
        await self._holder.hold(conn)
        link, pause = link_of(conn), RETAKE_RETRY_S[0]
        while self.retake is not None and self._started_once:
            try:
                if await self.retake.passed(link):
                    break
            except Exception as e:  # (a read that failed: once per link, then quietly)
                if self._link_down() or link_of(conn) is not link:
                    raise  # the connection's: the gate probes again on the next one
                log.log(logging.WARNING if pause == RETAKE_RETRY_S[0] else logging.DEBUG,
                        "replica %s: reading its groups' streams before it publishes again "
                        "failed (%s: %s); trying again, every %gs at most", self.replica_id,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "",
                        RETAKE_RETRY_S[1])
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETAKE_RETRY_S[1])
                continue
            await self._holder.hold(conn)  # (deposed: waits to be stopped, for good)
        self._link_alive_wall = time.time()

    def retake_reader(self) -> Reader:
        """This group's part of its process's :class:`RetakeCheck`."""
        return Reader(self.settings.group, self._unsent_committed, self._others_since_cut,
                      self._cut_checked)

    def _unsent_committed(self) -> int:
        """Operations of this replica's own that the broker never confirmed, once what was
        written and not committed yet is (a write in the batch window counts too)."""
        self.durable.commit()
        return self.store.unconfirmed_operations()

    async def _others_since_cut(self) -> set[str]:
        """The other replicas of this node's principal that wrote in its group since it was
        cut off: its stream read from where it stood then (one that reads the stream: from
        the offset after the one it logged; one with a queue of its own: from
        :data:`RESUME_MARGIN_S` before the last time the broker answered it, a confirm or
        the holder queue taken, on the lost connection), after a probe that the stream
        takes writes (not through the gate, which awaits this). Where it stood is the
        replica's clock as this is first called after a cut, kept until the check passed:
        a read cut short by another lost connection has applied part of the stream."""
        if self._clock_at_cut is None:
            self._clock_at_cut = dict(self.replica.clock)
        assert self._conn is not None
        await self._gate.probe_on(self._conn)
        if self.settings.consume == "stream":
            await self._replay_stream(resume=True, probed=True)
        else:
            alive = max(self._link_alive_wall, self._out.confirmed_wall)
            await self._replay_stream(since=datetime.datetime.fromtimestamp(
                alive - RESUME_MARGIN_S, tz=datetime.UTC), probed=True)
        return self._other_writers(self._clock_at_cut)

    def _cut_checked(self) -> None:
        self._clock_at_cut = None

    def _other_writers(self, before: Mapping[str, int]) -> set[str]:
        """The replicas of this node's sole :attr:`_principal`, this one aside, whose
        operations the replica's clock holds beyond ``before`` (a clock of earlier), or
        whose operations wait in its causal buffer (for earlier ones that a queue of its
        own has not delivered yet)."""
        p, rid = self._principal, self.replica_id
        if p is None:
            return set()
        grown = {split(ch)[0] for ch, seq in self.replica.clock.items()
                 if seq > before.get(ch, 0)}
        waiting = {split(ch)[0] for ch in self.replica.waiting_origins()}
        return {o for o in grown | waiting if o != rid and belongs(o, p)}

    def _refuse_if_superseded(self, before: Mapping[str, int]) -> None:
        """After a used store's resumed read of the stream (which came before anything is
        published on this connection): if another replica of this node's sole
        :attr:`_principal` wrote since ``before`` (the clock before that read), that process
        ran while this one was down or cut off, and decided without what this one's outbox
        holds unsent. If it holds operations, depose this process (:meth:`depose`: its
        stores are marked, and set aside at the next start) and raise
        :class:`~crdt_ops.errors.Deposed`. (One that reconnects learns it from its holder
        queue, or from the same read of its streams before it publishes again:
        :mod:`~crdt_ops.transport.amqp.retake`.)"""
        p, rid = self._principal, self.replica_id
        others = self._other_writers(before)
        if not others or not (unsent := self.store.unconfirmed_operations()):
            return
        self.depose()
        raise Deposed(
            f"replica {rid}: {', '.join(sorted(others))}, of its principal {p}, wrote in group "
            f"{self.settings.group} while this one was down or cut off, and its store holds "
            f"{unsent} messages of operations of its own it never sent, decided without "
            "theirs: they are never sent. Its stores are marked deposed: start it again, and "
            "it sets them aside and runs as a new replica")

    async def _follow(self) -> None:
        """When due (:attr:`_consume_due`), consume our queue again, or the stream from the
        offset logged last."""
        await self._consume_due.wait()
        self._consume_due.clear()
        assert self._consumer is not None and self._consume_channel is not None
        try:
            # on a new connection: not before it holds this replica's holder queue (while
            # another process's connection holds it, that one consumes: a second consumer
            # would take deliveries meant for it) and the stream takes writes
            await self._gate.ready()
            await self._consumer.consume(self._consume_channel)
            self._consume_failed = 0
        except Exception as e:
            # a channel aio-pika has not reopened yet, one closed under the call (aiormq
            # raises a bare Exception then), the connection lost again: try again in a
            # moment while connected; else the reconnection makes it due again. One line
            # for the first failure in a row while connected; the others, and one while
            # the connection is lost (its own line says so), at DEBUG.
            self._consume_failed += 1
            said = self._consume_failed > 1 or self._lost_at is not None
            log.log(logging.DEBUG if said else logging.INFO,
                    "replica %s: consuming %s failed (%s: %s); %s", self.replica_id,
                    self._consumer.source, type(e).__name__, e,
                    "trying again" if self._lost_at is None else "once reconnected")
            await asyncio.sleep(CONSUME_RETRY_S)
            if self._lost_at is None:
                self._consume_due.set()
        except BaseException:
            self._consume_due.set()  # (the step is run again after a pause)
            raise

    def _queue_lost(self, deleted: bool) -> None:
        """Our queue's consumer is gone (its channel closed, or the broker cancelled it:
        ``deleted``, the queue was): consume again, and declare the topology again at the
        next echo tick; a queue deleted lost what it held, read from the stream then."""
        self._redeclare_due = True
        if deleted:
            self._reread_due = True
        self._consume_due.set()

    def _stream_lost(self, deleted: bool) -> None:
        """Our consumer of the stream is gone (its channel closed, or the broker cancelled
        it: ``deleted``): consume again, and declare the topology again at the next echo
        tick; from the new stream's start if it was deleted."""
        self._redeclare_due = True
        if deleted:
            self._read_stream_from_start("the stream was deleted")
        self._consume_due.set()

    def _read_stream_from_start(self, why: str) -> None:
        """Forget the offset stored, so that the stream is consumed from its first message
        next (what comes twice is dropped by the clock): an offset of a stream since
        deleted and declared again, or one past its end, would skip what it holds."""
        log.warning("replica %s: %s; reading %s from its start", self.replica_id, why,
                    self.topology.stream)
        with contextlib.suppress(StoreUnavailable):  # (reported: the recovery rewinds)
            self.durable.forget_mark(STREAM_OFFSET)

    async def _declare_shared(self, channel: AbstractChannel) -> None:
        """Declare the group's exchanges and shared queues (:mod:`~crdt_ops.transport.topology`)."""
        exchanges = await declare(channel, self.topology)
        self._attach(channel, exchanges[self.topology.exchange],
                     exchanges[self.topology.dead_letter_exchange],
                     exchanges.get(self.topology.routed_exchange))

    def _attach(self, channel: AbstractChannel, exchange: AbstractExchange,
                dead_letters: AbstractExchange, routed: AbstractExchange | None) -> None:
        """Publish through ``channel`` to ``routed`` (a group with sub-groups), else to
        ``exchange``, the fanout one (the stream's markers and probes go there always);
        dead-letter to ``dead_letters``."""
        self._exchange = exchange
        self._in.dead_letter_exchange = dead_letters
        self._out.connection, self._out.channel = self._conn, channel
        self._out.exchange = routed or exchange

    async def _replay_stream(self, reread: bool = False, resume: bool = False,
                             since: datetime.datetime | None = None,
                             probed: bool = False) -> None:
        """Join: with this replica's queue already bound (collecting), apply the
        stream from its start up to a marker published now; whatever the queue
        holds twice is dropped by the clock. ``reread``: the gap watch reads it
        again; what is invalid or over the buffer's caps there was dead-lettered
        when it came through the queue, and is skipped silently now. ``resume``: a
        replica that reads the stream starts again: from the offset after the one it
        logged last (its start if none), so that it has whatever it sent itself
        before it writes again. ``since``: from what the broker wrote at that time or
        later (a replica with a queue of its own starts again). Where nothing at all
        comes from there (the stream was declared anew), from its start. ``probed``: the
        caller found the stream to take writes on this connection (else the gate probes
        it first)."""
        assert self._conn is not None and self._exchange is not None
        if not probed:
            await self._stream_ready()  # else the marker may never come
        marker = message(self.settings, self._clock_message(), self._signer,
                         message_id=f"join-{self.replica_id}-{uuid.uuid4().hex}")
        logged = stored_offset(self.durable) if resume else None
        start: int | datetime.datetime | None = since
        if since is None and logged is not None:
            start = logged + 1
        try:
            async for batch in read_stream(self._conn, self.settings, self._exchange, marker,
                                           since=start):
                await self._in.apply(batch, stream=True, reread=reread)
        except PastTheEnd as e:
            self._read_stream_from_start(
                f"the offset it logged last, {logged}, is past the end of the stream "
                "(declared anew since?)" if since is None else
                f"{e} (declared anew since, or this machine's clock is ahead of the broker's?)")
            await self._replay_stream(reread=reread, probed=probed)

    def _clock_message(self) -> bytes:
        """This replica's clock as a probe or a marker carries it, published outside the
        outbox's order: its own operations named only up to the first one the broker has
        not confirmed (:meth:`Replica.clock_message
        <crdt_ops.replica.Replica.clock_message>`): a process found deposed never sends
        them, and its peers would wait for them for good."""
        return self.replica.clock_message(unsent_from=self.store.unconfirmed_from())

    async def _stream_ready(self) -> None:
        """Return once the group's stream took a probe on the connection in use
        (:class:`~crdt_ops.transport.amqp.stream_ready.StreamGate`): RabbitMQ confirms and
        drops what is routed to a stream that is still starting. At once but after a
        (re)connection; one probe at a time for all callers."""
        t0 = time.monotonic()
        probes = await self._gate.ready()
        if probes > 1:
            log.warning("replica %s: the stream %s took writes after %.1fs (%d probes; "
                        "it dropped what was routed to it meanwhile); publishing",
                        self.replica_id, self.topology.stream, time.monotonic() - t0, probes)

    def _on_lost(self, conn: object, error: BaseException | None) -> None:
        """The connection is gone (called again for each failed reconnect attempt):
        one line when it was up, none while aio-pika keeps trying (logs.py keeps its
        attempts to one line now and then)."""
        if getattr(conn, "_close_called", False) or self._lost_at is not None:
            return  # closed by us (stop), or already said
        self._lost_at = time.monotonic()
        why = f"{type(error).__name__}: {error}" if error else "closed"
        log.warning("replica %s of group %s lost its connection to the broker (%s); "
                    "reconnecting every %gs", self.replica_id, self.settings.group,
                    str(why).splitlines()[0][:300], getattr(conn, "reconnect_interval", 1))

    def _on_reconnect(self, *_: object) -> None:
        metrics.RECONNECTS.labels(self.replica_id, self.settings.group).inc()
        lost, self._lost_at = self._lost_at, None
        log.warning("replica %s of group %s reconnected to the broker%s; republishing the "
                    "outbox", self.replica_id, self.settings.group,
                    "" if lost is None else f" after {time.monotonic() - lost:.1f}s")
        # what was lost with the broker's state is declared again, and what our queue
        # missed while its binding may have been gone (an operator's deletion that the
        # broker's restart hides) is read from the stream
        self._redeclare_due = self._reread_due = True
        self._consume_due.set()  # reading the stream: read on from the offset logged last
        self.durable.outbox_ready.set()

    async def _redeclare(self) -> None:
        """Declare the group's topology again, every binding included (all of it is
        idempotent): the exchanges, the dead-letter queue, the stream and their
        bindings, this replica's queue, its binding, and its consumer if the broker
        dropped it (the queue was deleted)."""
        assert self._pub is not None and self._conn is not None
        self._redeclare_due = False
        if not await self._holder.take(self._conn):  # (said by the holder) deleted, and
            self._gate.forget()  # taken by another process: publish only once held again
            self._redeclare_due = True  # (again at the next tick)
        if not self._narrow:
            await self._declare_shared(self._pub)
        reads_stream = self._stream_in is not None  # (the stream was declared above)
        if not reads_stream:
            assert self._queue is not None
            await self._queue.declare()
            await bind_member(self._queue,
                              self.topology.member(self.replica_id, self.replica.held_subgroup))
        assert self._consumer is not None and self._consume_channel is not None
        if not await self._consumer.current(self._consume_channel):
            if not reads_stream:
                log.warning("replica %s: its queue %s had lost its consumer; consuming again",
                            self.replica_id, self._consumer.source)
            self._consume_due.set()

    async def _echo_watch(self) -> None:
        """Every heartbeat: when our queue stayed silent for longer than the patience
        (``max(gap_timeout_s, 4 x heartbeat_s)``) while our confirmed messages await
        their echo (:mod:`crdt_ops.transport.echo`), the path from the exchange to us
        is broken: declare the topology again and re-read the stream. Also declares
        it again after a reconnect or a publish to a missing exchange, and then re-reads
        the stream, as after the broker returned our messages as unroutable: the group
        may have published into an exchange without our binding, and what our queue
        missed then (a retirement, a heartbeat) is no gap a clock would reveal.
        Silence says nothing while the connection is down, while deliveries wait for a
        failed store, or when this tick came late (the process was paused, or its loop
        stalled)."""
        s, rid = self.settings, self.replica_id
        patience = max(s.gap_timeout_s, 4 * s.heartbeat_s)
        await asyncio.sleep(s.heartbeat_s)
        now = time.monotonic()
        late, self._echo_tick = now - self._echo_tick > s.heartbeat_s + patience, now
        if late or self.store_failure is not None or self._lost_at is not None:
            self._echo.reset(now)  # (nothing comes back while the connection is down)
        silent = self._echo.silent_for(now)
        metrics.ECHO_SILENT.labels(rid, self.settings.group).set(silent if silent > patience else 0)
        if silent > patience:
            if not self.echo_silent_s:
                log.error("replica %s: none of its confirmed messages came back through its "
                          "queue %s for %.0fs (the exchange, the binding or the queue "
                          "deleted? or the broker blocks this connection: a memory or disk "
                          "alarm, `rabbitmqctl list_connections state`); declaring the "
                          "topology again and re-reading the stream",
                          rid, self.topology.queue(rid), silent)
            self.echo_silent_s = silent
            metrics.ECHO_LOSSES.labels(rid, self.settings.group).inc()
            self.echo_losses += 1
            self._redeclare_due = self._reread_due = True
            if self._stream_in is not None:  # its consumer may wait past the stream's end
                self._read_stream_from_start("none of its messages came back through it")
                self._consume_due.set()
            self._echo.reset(now)
        elif self.echo_silent_s:
            log.warning("replica %s: its own messages come back again", rid)
            self.echo_silent_s = 0.0
        if self._redeclare_due:
            await self._redeclare()
        if self._reread_due:
            self._reread_due = False
            if self._stream_in is None:  # (reading the stream, the consumer reads on)
                log.info("replica %s: re-reading the stream for what its queue may have "
                         "missed", rid)
                try:
                    await self._replay_stream(reread=True)
                except BaseException:
                    self._reread_due = True  # (read at a later tick, once it can be)
                    raise

    # ------------------------------------------------------------ publishing and receiving

    @property
    def dead_lettered(self) -> int:
        """Dead letters of this replica the broker confirmed since this process started."""
        return self._in.dead_lettered

    @property
    def published(self) -> int:
        """Messages of ours the broker confirmed (to the exchange, or to the stream after
        a refusal) since this process started."""
        return self._out.published

    @property
    def resent(self) -> int:
        """Messages of ours published again because a peer asked for them (the stream
        missed them: :mod:`~crdt_ops.transport.resend`) since this process started."""
        return self._resender.resent

    @property
    def relayed(self) -> int:
        """Other replicas' messages published again from our log because a peer asked
        for them and their sender did not send them (:mod:`~crdt_ops.transport.relay`)
        since this process started."""
        return self._relayer.relayed if self._relayer is not None else 0

    @property
    def refused(self) -> int:
        """Messages of ours the broker refused (basic.nack) since this process started."""
        return self._out.refused

    def _topology_lost(self) -> None:
        """A publish found the group's exchange missing (channel error 404 NOT_FOUND)."""
        if not self._redeclare_due:
            log.warning("replica %s: the group's exchange %s is gone (deleted?); declaring "
                        "the topology again and re-reading the stream", self.replica_id,
                        self.topology.exchange)
        self._redeclare_due = self._reread_due = True

    async def _redeclare_and_reread(self) -> None:
        await self._redeclare()
        self._reread_due = True

    def confirmed_through(self) -> float:
        """A ``time.monotonic()`` instant (seconds) before which every operation this
        replica committed (``write()``/``flush()`` returned) has been confirmed by the
        broker, i.e. routed to every queue bound to the group's exchange and to the
        stream (RabbitMQ "Consumer Acknowledgements and Publisher Confirms"); 0.0 until
        the first confirm. A worker's lease counts a heartbeat only once this passes the
        moment the heartbeat was committed (services/lease.py)."""
        return self._out.confirmed_through

    @property
    def sole_lost(self) -> asyncio.Event:
        """Set once another process took this node's ``sole`` holder queue after this one
        had held it (:class:`~crdt_ops.transport.amqp.holder.Holder`)."""
        return self._holder.sole_lost

    @property
    def standby(self) -> bool:
        """Whether this node waits for another process to let go of its holder queue, or
        of its ``sole`` one (:class:`~crdt_ops.transport.amqp.holder.Holder`)."""
        return self._holder.waiting

    def heard_through(self) -> float:
        """A ``time.monotonic()`` instant (seconds) before which everything the broker
        routed to this replica's queue has been delivered here and handed to the replica:
        the publish time of the latest of our own messages that came back through our
        queue (a queue is FIFO, so what was routed to it before our message came first).
        0.0 until the first echo. Stops advancing while this replica cannot hear the group
        (broker down, process paused, queue deleted): logic's liveness rule counts a
        node's silence only up to it (services/liveness.py). Handed to the replica is not
        applied: while the replica holds operations waiting for earlier ones (a node's beat
        among them, maybe), it stays at the instant they were first found waiting, so that
        a silence it cannot see through proves nothing either."""
        held = self._held_since
        echoed = self._echo.heard_through
        return echoed if held is None else min(echoed, held)

    async def _heartbeat(self) -> None:
        """Every ``heartbeat_s`` (on average: :func:`~crdt_ops.transport.waiting.jittered`):
        publish this replica's clock (a heartbeat), unless it
        sealed operations of its own since the last tick. Their batches told the group
        its clock already (a batch carries the clock entries that grew since the one
        before: :class:`~crdt_ops.ops.Batch`), and they come back as echoes
        (:mod:`crdt_ops.transport.echo`) as a heartbeat would; a replica that writes at
        least once a ``heartbeat_s`` (a worker's node beat) sends a heartbeat only every
        :data:`BEAT_AT_LEAST_EVERY` ticks. That one carries its whole clock: a replica that
        missed the start of the deltas (it replayed a stream already cut by its
        retention) learns the entries that no longer grow from it. While this replica
        asks for operations the stream did not hold (``Replica.asking``), it beats every
        tick. Each tick also answers what peers asked of it, and drops from its kept
        messages what every peer has (:class:`~crdt_ops.transport.resend.Resender`), and
        relays what peers asked other senders for, when those did not send it
        (:class:`~crdt_ops.transport.relay.Relayer`)."""
        await asyncio.sleep(jittered(self.settings.heartbeat_s))
        await self.durable.store_ok.wait()
        self._resender.tick(time.monotonic())
        if self._relayer is not None:
            self._relayer.tick(time.monotonic())
        asking = self.replica.asking
        metrics.ASKING.labels(self.replica_id, self.settings.group).set(asking)
        self._watch_publishing(time.monotonic())
        own = self.replica.own_seq
        self._skipped = 0 if own == self._own_at_tick else self._skipped + 1
        if self._skipped in (0, BEAT_AT_LEAST_EVERY) or asking:
            self.replica.heartbeat()
            self.durable.commit()
            self.heartbeats += 1
            self._skipped = 0
        self._own_at_tick = own
        self._observe()

    def _watch_publishing(self, now: float) -> None:
        """Export how long the oldest unconfirmed message has waited, and say once when it
        passes ``gap_timeout_s`` (and once when publishing goes on)."""
        metrics.PUBLISH_WAIT.labels(self.replica_id, self.settings.group).set(
            self._out.waiting_s(now))
        said = self._publish_health(now)
        stalled = said != "ok"
        if stalled and not self._publish_stalled:
            log.warning("replica %s: %s", self.replica_id, said)
        elif self._publish_stalled and not stalled:
            log.info("replica %s: the broker confirms its messages again", self.replica_id)
        self._publish_stalled = stalled

    def _publish_health(self, now: float) -> str:
        waited = self._out.waiting_s(now)
        if waited <= self.settings.gap_timeout_s or self.store_failure is not None:
            return "ok"  # (while the store fails, its part says why nothing goes out)
        return (f"{self._out.unconfirmed} of its messages have waited {waited:.0f}s for the "
                "broker's confirm: they are safe in its store and go out once the broker "
                "takes them (is a memory or disk alarm blocking publishers? `rabbitmqctl "
                "status` shows alarms)")

    def _arrived(self) -> None:
        """A batch of deliveries arrived (from our queue or the stream)."""
        self._arrivals += 1
        self.loop_lag.busy()

    async def _settle(self) -> None:
        """Settle what causal stability released (``Replica.compact``), a step at a time
        with the loop's other work in between: a record costs its compact size soon
        after it is stable, and no step holds a delivery up for more than a few ms.
        Every ``SETTLE_EVERY_S`` while deliveries arrive, every ``SETTLE_IDLE_S`` when
        none did since the last time."""
        quiet = self._arrivals == self._arrivals_settled
        await asyncio.sleep(SETTLE_IDLE_S if quiet else SETTLE_EVERY_S)
        self._arrivals_settled = self._arrivals
        step = self.replica.SETTLE_STEP
        while self.replica.compact(step) >= step:
            await asyncio.sleep(0)

    async def _gap_watch(self) -> None:
        """Read the stream again (what it holds twice is dropped by the clock) when
        operations waited longer than the patience for ones that never came, or
        when messages were dropped over the buffer's caps (``REREAD_DUE``, kept in
        the store so a restart still re-reads) and the patience passed since the
        last re-read: the rule is :class:`~crdt_ops.transport.amqp.recovery.GapWatch`.
        A sender whose gap never fills is named in a warning and counted in
        ``crdt_ops_gap_stuck_replicas``."""
        s, rid = self.settings, self.replica_id
        await asyncio.sleep(s.gap_timeout_s / 2)
        missing = self.replica.missing()
        if not missing:
            self._gaps = self._gaps.quiet()
            metrics.GAP_STUCK.labels(rid, self.settings.group).set(0)
        now = time.monotonic()
        why = self._gaps.reason(now, missing, self._buffer_since,
                                self.store.get(REREAD_DUE) == b"1")
        if why is None:
            return
        waited = 0.0 if self._buffer_since is None else now - self._buffer_since
        log.warning("replica %s %s; re-reading %s", rid,
                    f"waits {waited:.0f}s for {few(missing)}" if why == "gap"
                    else "dropped messages over the causal buffer's caps", self.topology.stream)
        self.store.put(REREAD_DUE, b"0")  # drops from now on need another re-read
        metrics.GAP_REREADS.labels(rid, self.settings.group).inc()
        await self._replay_stream(reread=True)
        self._buffer_since = time.monotonic()
        self._gaps, stuck = self._gaps.reread(self._buffer_since, missing, self.replica.missing())
        metrics.GAP_STUCK.labels(rid, self.settings.group).set(len(stuck))
        if stuck:
            log.warning("replica %s: the stream does not hold the operations that waiting "
                        "ones need: %s (lost by the broker, or not yet published); asking "
                        "their senders for them in its heartbeats; next re-read in %.0fs at "
                        "the earliest", rid, few(stuck), self._gaps.patience)
            self.replica.ask(stuck)

    async def retire(self, replica_id: str) -> None:
        """Tell the group that ``replica_id`` is gone for good, naming its last
        operation in the stream: stability and compaction stop waiting for it once
        that operation is delivered (here and at every replica)."""
        assert self._conn is not None and self._exchange is not None
        while True:
            await self._stream_ready()
            last = await last_operation(self._conn, self.settings, self._exchange, replica_id)
            self.replica.retire(replica_id, last)
            try:
                await self._out.publish(Replica.retirement(replica_id, last))
                return
            except StreamUnchecked:
                continue  # reconnected meanwhile: probe the stream, read it again

    async def leave(self) -> None:
        """Retire this replica for good: publish its retirement after its last
        operations, wait until the broker confirmed all of it, then (in a group with an
        agreed membership) until every member reported having its operations, and stop.
        While it waits it answers a member that asks for operations of its that the
        group's stream lost (:mod:`~crdt_ops.transport.resend`): once it is gone only
        the members that delivered them can, from their logs
        (:mod:`~crdt_ops.transport.relay`). It waits at most
        :data:`LEAVE_WAIT_GAP_TIMEOUTS` gap timeouts (at least :data:`LEAVE_WAIT_MIN_S`),
        and logs what is not known everywhere then."""
        self._retired_said = True  # on purpose: nothing to warn about
        await self.durable.store_works()  # (a failed store commits nothing)
        self.replica.heartbeat(retired=True)
        self.durable.commit()
        await self._drain(math.inf, through_outages=True)
        m = self.replica.membership
        if m.managed and m.members() - {self.replica_id}:  # (the last member: no one to wait for)
            wait = max(LEAVE_WAIT_MIN_S, LEAVE_WAIT_GAP_TIMEOUTS * self.settings.gap_timeout_s)
            deadline = time.monotonic() + wait
            while (lag := self.replica.stable_lag()) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if lag:
                log.warning("replica %s retires with %d of its operations not reported by "
                            "every member after %.0fs; a member that misses them finds "
                            "them in the group's stream only", self.replica_id, lag, wait)
        await self.stop()

    def _observe(self) -> None:
        r, rid = self.replica, self.replica_id
        metrics.BUFFER_DEPTH.labels(rid, self.settings.group).set(r.buffered)
        if r.buffered and self._held_since is None:  # (see heard_through)
            self._held_since = time.monotonic()
        elif not r.buffered:
            self._held_since = None
        gap = r.has_gap()  # operations waiting, or reported and not delivered
        if gap and self._buffer_since is None:
            self._buffer_since = time.monotonic()
        elif not gap:
            self._buffer_since = None
        metrics.BUFFER_WAIT.labels(rid, self.settings.group).set(
            0 if self._buffer_since is None else time.monotonic() - self._buffer_since)
        metrics.CLOCK_SIZE.labels(rid, self.settings.group).set(len(r.clock))
        if not self._retired_said and rid in r.membership.retired:
            self._retired_said = True
            log.error("replica %s was retired from group %s (its retirement was delivered "
                      "here): it writes no more (writes raise NotAMember); stop it, and start "
                      "a new replica with another --replica-id and --store if one is needed",
                      rid, self.settings.group)
        now = time.monotonic()
        if now - self._lag_observed >= 1.0:  # costs O(members x clock): once a second at most
            self._lag_observed = now
            metrics.STABLE_LAG.labels(rid, self.settings.group).set(r.stable_lag())


__all__ = ["AmqpNode"]


def _step_name(step: Callable[[], Awaitable[None]]) -> str:
    """What a node's step is called in its log lines: its method's name, or for a part's
    ``run`` the part (``publisher``, ``inbound``)."""
    name = getattr(step, "__name__", "step").strip("_")
    owner = getattr(step, "__self__", None)
    return type(owner).__name__.lower() if name == "run" and owner is not None else name
