"""A replica kept durable in a SQLite store, for any transport to pump.

:class:`DurableReplica` owns a :class:`~crdt_ops.replica.Replica` and its
:class:`~crdt_ops.transport.store.Store`, and keeps them in step:

- it is *opened* from the store (:meth:`DurableReplica.open`: identity, then the snapshot
  and the log replayed; a new store with ``--bootstrap`` starts from a peer's snapshot).
  Its constructor does no I/O;
- local operations are *accepted* when :meth:`flush` (or the :meth:`write` block)
  returns: they are then in the store's outbox and on the disk, in one transaction per
  group commit (:meth:`flusher`: under load from concurrent writers it waits up to
  ``batch_delay_ms`` or ``batch_ops``; a lone write is committed at once, on its
  writer's turn of the event loop); the
  transport publishes the outbox (:attr:`outbox_ready`) until its broker confirms it.
  With ``disk_sync="alongside"``, while a transport pumps the replica, the transaction
  is committed without waiting for the disk, the transport is woken to publish it, and
  the disk sync runs on a thread meanwhile
  (:meth:`~crdt_ops.transport.store.Store.sync`); the writers and the ``on_committed``
  hooks are answered once it returns. So a peer may apply an operation before its
  writer is told it is durable; what an OS crash then undoes the replica reads back
  from the group's stream before it writes again (the transport's restart read, and
  :meth:`~crdt_ops.replica.Replica.unmet_claims`). With ``"first"`` (the default) the
  commit waits for the disk, and the transport publishes after it;
- deliveries are logged with what they produced in one transaction
  (:meth:`log_delivered`; without a disk sync of its own when they produced nothing:
  see there) before the transport acknowledges them; between applying
  and logging them (:meth:`hold`) the reactions to them may write, and their
  operations join the same transaction; nothing this replica sends (operations,
  heartbeats) is logged before the deliveries it saw;
- a snapshot is taken every ``snapshot_every`` operations applied, dropping the log it
  covers;
- when the store fails (:class:`~crdt_ops.transport.store.StoreUnavailable`) memory is
  restored from the store as soon as it can be read, so memory is never ahead of what
  is durable; until the store takes a write again (probed with backoff from 0.1 s to
  :data:`MAX_STORE_RETRY_S`), :attr:`store_ok` is clear, and writes raise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from crdt_ops.errors import BufferFull, InvalidMessage
from crdt_ops.policy import OPEN, WritePolicy
from crdt_ops.replica import Replica
from crdt_ops.subgroups import NONE, SubGroups
from crdt_ops.transport import deposition, forking, metrics
from crdt_ops.transport.config import Settings
from crdt_ops.transport.store import Store, StoreUnavailable
from crdt_ops.transport.waiting import wait_set

log = logging.getLogger(__name__)

#: Store key: the ``--membership`` mode the replica runs with (b"open" or b"managed").
MEMBERSHIP = "membership"
#: Store key written to learn that a failed store takes writes again.
STORE_PROBE = "store_probe"
#: Store key: when this replica last committed messages of its own (operations or
#: heartbeats), in ms since the epoch by its wall clock (decimal ASCII), written with them.
#: What it published that an older copy of its store, or an OS crash, took from it was
#: published after that (:meth:`DurableReplica.committed_at`).
COMMITTED_AT = "committed_at_ms"
#: Longest pause between two tries of a failed store (seconds; from 0.1, doubling).
MAX_STORE_RETRY_S = 5.0


def members_of(mode: bytes | None) -> tuple[str, ...] | None:
    """The founders a new replica starts with: none known (managed: it founds the group
    or is admitted) or None (open: no agreed membership)."""
    return () if mode == b"managed" else None


def default_store_path(settings: Settings, name: str) -> str:
    """``settings.store``, else ``crdt-ops.<group>.<name>.sqlite`` in the working directory."""
    return settings.store or f"crdt-ops.{settings.group}.{name}.sqlite"


class DurableReplica:
    """A :class:`~crdt_ops.replica.Replica` and the :class:`~crdt_ops.transport.store.Store`
    that keeps it (see the module docstring). Build it with :meth:`open`.

    ``on_committed``: called with how many operations this replica issued
    (:attr:`Replica.own_seq <crdt_ops.replica.Replica.own_seq>`) each time its own
    operations up to there were committed to the outbox. ``on_restored``: called with
    the clock memory was restored to after a store failure (what memory held beyond it is
    gone)."""

    def __init__(self, settings: Settings, store: Store, replica: Replica, *,
                 options: dict[str, Any]) -> None:
        self.settings = settings
        self.store = store
        self.replica = replica
        self.replica_id = replica.replica_id
        self._options = options
        #: set when the outbox holds rows to publish (the transport clears it)
        self.outbox_ready = asyncio.Event()
        #: since when (:func:`time.monotonic`) the outbox has held a row its broker has not
        #: confirmed; None: none (the transport clears it when it finds none)
        self.outbox_since: float | None = None
        #: clear while the store fails
        self.store_ok = asyncio.Event()
        self.store_ok.set()
        #: the store's last failure while it fails, else None
        self.store_failure: StoreUnavailable | None = None
        self.store_failures = 0  # times the store failed
        self.restores = 0  # times memory was restored from the store
        self.on_committed: list[Callable[[int], None]] = []
        self.on_restored: list[Callable[[dict[str, int]], None]] = []
        #: a transport pumps it (its :meth:`flusher` runs); else :meth:`flush` commits
        self.pumping = False
        self._recovery: asyncio.Task[None] | None = None
        self._open_blocks = 0  # write() blocks running
        self._dirty = asyncio.Event()
        self._full = asyncio.Event()
        self._committed: asyncio.Future[None] | None = None
        #: commits of messages of its own made without a disk sync, numbered from 1
        self._commits = 0
        #: those not known to be on the disk: (number, own_seq then, its writers' future)
        self._awaiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._syncing: concurrent.futures.Future[None] | None = None  # the sync running
        self._sync_thread: concurrent.futures.ThreadPoolExecutor | None = None
        #: deliveries applied to memory, not logged yet (:meth:`hold`)
        self._unlogged: list[bytes] = []
        # where the deliveries held were read up to (hold's marks): logged with them
        self._marks: dict[str, int] = {}
        # the marks logged last, as read from the store or written since (mark())
        self._logged_marks: dict[str, int | None] = {}
        self._last_commit = 0.0
        # this replica's series of log transactions, looked up once
        rid, group = self.replica_id, self.settings.group
        self._synced_commits = metrics.LOG_COMMITS.labels(rid, group, "true")
        self._plain_commits = metrics.LOG_COMMITS.labels(rid, group, "false")
        self._waiting = 0  # flush() calls waiting for the next commit
        self._turn_committed = False  # a flush() committed at once in this turn of the loop
        self._last_waiting = 0  # how many flush() calls the last commit of writes answered
        self._since_snapshot = 0
        self._snapshotting = False
        self._aside: asyncio.Task[None] | None = None  # a snapshot encoded in a child
        self._own_counted = replica.own_seq
        #: where :meth:`open` set a deposed store aside, if it did, and its replica's id
        self.aside: Path | None = None
        self.set_aside_id: str | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, settings: Settings, *, name: str = "replica",
             wall_clock: Callable[[], int] = time.time_ns,
             policy: WritePolicy = OPEN, subgroups: SubGroups = NONE,
             deposed_id: str | None = None) -> DurableReplica:
        """Open the store (``settings.store``, else :func:`default_store_path`) and
        restore the replica it holds. Its id is ``settings.replica_id``, else the one
        remembered in the store, else a new ``<name>.<host>-<random>``. A store marked
        deposed, or one of replica ``deposed_id`` (another store of the same process was
        set aside: one identity per process), is set aside first and the replica starts
        with a new one (:mod:`~crdt_ops.transport.deposition`; :attr:`aside` says where
        the old one went, :attr:`replaces` which id this one retires). Raises ValueError
        when the store belongs to another replica id or was made with the other
        ``membership`` mode, :class:`~crdt_ops.transport.store.StoreLocked` when another
        process has it open, OSError when a deposed store cannot be moved aside.
        ``policy`` and ``subgroups``: the group's write policy and sub-group rule
        (:mod:`crdt_ops.subgroups`), the same at every replica."""
        store = Store(default_store_path(settings, settings.replica_id or name))
        known = store.get("replica_id")
        aside, old = None, None
        pending: tuple[str, ...] = ()
        if known and (deposition.deposed(store) or known.decode() == deposed_id):
            pending = deposition.replaced(store)  # (deposed before it retired them)
            store, aside = deposition.set_aside(store)
            old, known = known.decode(), None
            log.warning("replica %s of group %s was deposed (another process of its principal "
                        "ran while it was cut off or down): its store is set aside as %s, "
                        "with what it committed and never sent, and the replica starts with "
                        "a new store", old, settings.group, aside)
        rid = settings.replica_id or (known.decode() if known else
                                      f"{name}.{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
        if known and known.decode() != rid:
            store.close()
            raise ValueError(f"store {store.path} belongs to replica {known.decode()!r}, "
                             f"not {rid!r}; use its id or another --store")
        mode = store.get(MEMBERSHIP)
        if mode and mode.decode() != settings.membership:
            store.close()
            raise ValueError(f"store {store.path} was created with --membership "
                             f"{mode.decode()}, not {settings.membership}; a group's replicas "
                             "must all use one mode: start it with --membership "
                             f"{mode.decode()} (or a new group for the other mode)")
        store.put("replica_id", rid.encode())
        store.put(MEMBERSHIP, settings.membership.encode())
        if old is not None:  # (kept until retired: AmqpNode.start)
            deposition.replace(store, [r for r in (*pending, old) if r != rid])
        log.info("replica %s of group %s: its store is %s", rid, settings.group,
                 store.path.resolve())
        options = {"wall_clock": wall_clock, "policy": policy, "subgroups": subgroups,
                   "members": members_of(settings.membership.encode()),
                   "max_batch_ops": settings.batch_ops,
                   "max_waiting_per_origin": settings.max_waiting_per_origin}
        replica = restore(store, rid, options, settings.bootstrap)
        durable = cls(settings, store, replica, options=options)
        durable.aside, durable.set_aside_id = aside, old
        return durable

    @property
    def replaces(self) -> tuple[str, ...]:
        """The ids of the deposed replicas this one is to retire (:meth:`open` set their
        stores aside for this one, under a new id), until :meth:`replaced_retired`."""
        return deposition.replaced(self.store)

    def replaced_retired(self, replica_id: str) -> None:
        """``replica_id``, of :attr:`replaces`, is retired: forget it."""
        deposition.replace(self.store, [r for r in self.replaces if r != replica_id])

    def depose(self) -> bool:
        """Mark the store deposed (:func:`deposition.mark
        <crdt_ops.transport.deposition.mark>`): opened again, it is set aside. True if
        the store took the mark."""
        return deposition.mark(self.store, self.replica_id, self.settings.group)

    # ------------------------------------------------------------ a failing store

    def store_failed(self, error: StoreUnavailable) -> None:
        """A store read or write failed: memory may be ahead of the store. Until
        :meth:`_recover` restored memory from the store, deliveries wait, and
        ``write()``/``flush()`` raise :class:`StoreUnavailable`. A failure already
        reported (raised on through a loop) is not counted again."""
        if error is self.store_failure:
            return
        metrics.STORE_FAILURES.labels(self.replica_id, self.settings.group).inc()
        if self.store_failure is None:
            self.store_failures += 1
            log.error("replica %s: the store failed (%s); deliveries and writes stop until it "
                      "takes writes again (retried with backoff up to %.0fs; write() raises "
                      "StoreUnavailable meanwhile)", self.replica_id, error, MAX_STORE_RETRY_S)
            metrics.STORE_UP.labels(self.replica_id, self.settings.group).set(0)
        self.store_failure = error
        self.store_ok.clear()
        fut = self._committed
        if fut is not None and not fut.done():
            fut.set_exception(StoreUnavailable(f"{error}; the operations were not accepted"))
        if self._recovery is None or self._recovery.done():
            with contextlib.suppress(RuntimeError):  # no running loop: start() recovers
                self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Retry the store with backoff until it takes a write; then rebuild the replica
        from it (what memory held beyond the store is dropped: deliveries come again,
        local operations were not accepted), and let deliveries and writes resume."""
        pause, said = 0.1, time.monotonic()
        restored = False
        while True:
            while self._open_blocks:  # a block running now fails at its end; let it end
                await asyncio.sleep(0.01)
            try:
                if not restored:  # at once if the store can be read (a lock, a full disk):
                    self.replica.adopt(restore(self.store, self.replica_id, self._options,
                                               self.settings.bootstrap))
                    self._unlogged, self._marks = [], {}  # gone from memory too: they come again
                    self._logged_marks = {}  # read from the store again
                    restored = True  # memory no more ahead of it
                    for hook in self.on_restored:
                        hook(dict(self.replica.clock))
                self.store.put(STORE_PROBE, str(time.time_ns()).encode())
                break
            except StoreUnavailable as e:
                metrics.STORE_FAILURES.labels(self.replica_id, self.settings.group).inc()
                self.store_failure = e
                if time.monotonic() - said > 30:
                    said = time.monotonic()
                    log.error("replica %s: the store still fails (%s); retrying",
                              self.replica_id, e)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_STORE_RETRY_S)
        self.restores += 1
        self.store_failure = None
        metrics.STORE_UP.labels(self.replica_id, self.settings.group).set(1)
        self.store_ok.set()
        self.outbox_ready.set()
        log.warning("replica %s: the store takes writes again; memory restored from it "
                    "(clock %s); deliveries and writes resume", self.replica_id,
                    dict(self.replica.clock))

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Around a store write whose failure leaves memory ahead of the store: the
        failure is reported (:meth:`store_failed`) and raised on."""
        try:
            yield
        except StoreUnavailable as e:
            self.store_failed(e)
            raise

    async def store_works(self) -> None:
        """Return once the store takes writes (at once when it has not failed): after a
        :class:`StoreUnavailable`, memory was restored from the store by then."""
        await self.store_ok.wait()

    def refuse_write(self) -> None:
        """Raise :class:`StoreUnavailable` while the store fails."""
        if self.store_failure is not None:
            raise StoreUnavailable(f"replica {self.replica_id}: {self.store_failure}; "
                                   "nothing was written, retry later")

    # ------------------------------------------------------------ local writes

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Replica]:
        """``async with durable.write() as r: r.counter("x").increment()``: the
        operations are applied at once and accepted (durable) when the block exits.

        Raises :class:`~crdt_ops.transport.store.StoreUnavailable` when the store fails (on
        entry while it is failing, or at the end): then none of the block's
        operations is accepted, and memory is restored from the store (they are
        gone) before any other write or delivery is taken."""
        self.refuse_write()
        restores = self.restores
        self._open_blocks += 1
        try:
            yield self.replica
        finally:
            self._open_blocks -= 1
        if self.restores != restores:  # (a failure after its commit does not undo it)
            raise StoreUnavailable(f"replica {self.replica_id}: the store failed while this "
                                   "block ran; its operations were not accepted")
        await self.flush()

    async def flush(self) -> None:
        """Wait until every local operation applied so far is in the outbox, on the disk.
        Raises :class:`~crdt_ops.transport.store.StoreUnavailable` if the store is failing
        or fails."""
        self.refuse_write()
        if not self.replica.unsent:  # committed already (with a delivery's log, say)
            if self._awaiting:  # and maybe not on the disk yet
                await asyncio.shield(self._awaiting[-1][2])
            return
        if not self.pumping or self._at_once():  # not pumped (not started, or stopped),
            synced = self._write()                  # or a lone write: commit here
            if synced is not None:
                await synced  # its own (no other writer waits for it): needs no shield
            return
        if self._committed is None or self._committed.done():
            self._committed = asyncio.get_running_loop().create_future()
        fut = self._committed
        self._waiting += 1
        self._dirty.set()
        if self.replica.unsent >= self.settings.batch_ops:
            self._full.set()
        await asyncio.shield(fut)

    def _at_once(self) -> bool:
        """Whether :meth:`flush` commits on its caller's turn of the event loop rather than
        waking :meth:`flusher` (a lone write pays no turns of the loop, in which other
        callbacks would run first): when no flush waits already, the last commit did not
        answer several writers less than ``batch_delay_ms`` ago (the flusher's rule for
        load), and no flush committed at once in this turn of the loop yet, so that
        writers woken together share the flusher's next commit (and one writer writing in
        a loop yields to the others)."""
        if self._waiting or self._turn_committed or self._under_load():
            return False
        self._turn_committed = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        return True

    def _next_turn(self) -> None:
        self._turn_committed = False

    def _under_load(self) -> bool:
        """The last commit of local operations, less than ``batch_delay_ms`` ago, answered
        several writers waiting in :meth:`flush`."""
        return (self._last_waiting > 1 and time.monotonic() - self._last_commit
                < self.settings.batch_delay_ms / 1000)

    async def flusher(self) -> None:
        """One group commit of local writes (a transport runs it in a loop). Under load
        (the last commit, less than ``batch_delay_ms`` ago, answered several concurrent
        writers) wait up to that long, or until ``batch_ops`` are waiting; otherwise
        commit at once: a lone write, or one writer's writes in sequence, pay no batching
        delay (a lone write does not even wake this task: :meth:`_at_once`). Writers that
        ran in the same turn of the event loop share this commit anyway: the first one's
        flush wakes this task behind the others already scheduled (asyncio runs ready
        callbacks in order)."""
        await self._dirty.wait()
        await self.store_ok.wait()
        if self._under_load():
            await wait_set(self._full, self.settings.batch_delay_ms / 1000)
            if self.store_failure is not None:  # failed meanwhile: wait for its recovery
                return
        self.commit()

    def commit(self) -> None:
        """Hand the local operations to the outbox in one transaction (group commit), after
        the deliveries held unlogged (:meth:`hold`), in the same transaction (with
        ``disk_sync="alongside"``, pumped: on the disk a little later, the writers answered
        then; see :meth:`_write`). Raises :class:`StoreUnavailable` if the store fails
        (reported: the batches are dropped with memory's excess, and the held deliveries
        come again)."""
        self._write()

    def _write(self, flags: dict[str, bytes] | None = None,
               defer: bool = True) -> asyncio.Future[None] | None:
        """The one way to the store for deliveries and local operations: the deliveries held
        since the last write with their marks (:meth:`hold`: where they were read up to,
        no disk sync of their own, so undone only with them; a mark alone waits), then this
        replica's outgoing messages (its operations, and its heartbeats, which report its
        clock: never ahead of its log), and the store keys ``flags`` (synced to the disk), in
        one transaction.
        Answers every :meth:`flush` waiting, once what it committed is on the disk.

        With its own messages, pumped, without ``flags``, ``defer``, and the setting
        ``disk_sync="alongside"``: committed without a disk sync, the transport woken to
        publish them, and the sync started on a thread (:meth:`_start_sync`); returns the
        future answered once they are on the disk. Otherwise synced here (none when it
        holds deliveries alone: see :meth:`log_delivered`), and returns None.

        Raises :class:`StoreUnavailable`, taking nothing from the replica, while the store
        is failed (:meth:`store_failed`, until :meth:`_recover` restored memory from it): a
        failed transaction dropped operations that memory still holds, and what this one
        sent after them would follow a gap in this replica's sequence numbers, to be
        issued again with other operations once memory is restored."""
        if self.store_failure is not None:
            raise StoreUnavailable(f"replica {self.replica_id}: {self.store_failure}; "
                                   "nothing is committed until memory is restored from the "
                                   "store")
        self._dirty.clear()
        self._full.clear()
        msgs = self.replica.outgoing()
        if msgs:  # the writers' load (:meth:`_under_load`): a delivery's log is not a write
            self._last_commit = time.monotonic()
            self._last_waiting = self._waiting
        self._waiting = 0
        received, self._unlogged = self._unlogged, []
        marks: dict[str, int] = {}
        if msgs or received or flags:
            marks, self._marks = self._marks, {}
        # else a mark alone (what a stream reader read brought nothing: duplicates, its own
        # messages back, heartbeats) stays held for the next write: a transaction for it
        # would cost more than reading those again after a restart, dropped again
        later = (bool(msgs) and defer and self.pumping and not flags
                 and self.settings.disk_sync == "alongside")
        if msgs or received or flags:
            meta = {k: str(v).encode() for k, v in marks.items()}
            if msgs:
                meta[COMMITTED_AT] = str(time.time_ns() // 1_000_000).encode()
            meta.update(flags or {})
            with self.storing():
                # deliveries alone need no disk sync (see log_delivered); what this
                # replica sends does (here, or on the sync's thread: ``later``), and syncs
                # the deliveries logged before it too
                self.store.append(received, msgs, meta=meta,
                                  sync=bool(msgs or flags) and not later)
            self._logged_marks.update(marks)
            (self._synced_commits if msgs or flags else self._plain_commits).inc()
        if msgs:
            if self.outbox_since is None:
                self.outbox_since = time.monotonic()
            self.outbox_ready.set()
        waiting, self._committed = self._committed, None
        if waiting is None or waiting.done():
            waiting = None
        synced: asyncio.Future[None] | None = None
        if later:
            synced = waiting or asyncio.get_running_loop().create_future()
            self._commits += 1
            self._awaiting.append((self._commits, self.replica.own_seq, synced))
            self._start_sync()
        else:
            if msgs or flags:  # on the disk now, and every commit before it
                self._on_disk(self._commits)
            if msgs:
                self._committed_own(self.replica.own_seq)
            if waiting is not None:
                waiting.set_result(None)
        if msgs and not self._snapshotting:
            self._count_own()
        return synced

    def _start_sync(self) -> None:
        """Sync the store on a thread, unless a sync runs already (its end starts the next:
        one sync serves every commit made while the one before ran)."""
        if self._syncing is not None or not self._awaiting:
            return
        if self._sync_thread is None:
            self._sync_thread = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"sync-{self.replica_id}")
        self._syncing = self._sync_thread.submit(self._sync, asyncio.get_running_loop(),
                                                 self._commits)

    def _sync(self, loop: asyncio.AbstractEventLoop, through: int) -> None:
        """On the sync's thread: sync the store, and tell the loop (:meth:`_synced`; one
        callback, so the writers resume on the loop's next turn)."""
        error: BaseException | None = None
        try:
            self.store.sync()
        except Exception as e:
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._synced, through, error)

    def _synced(self, through: int, error: BaseException | None) -> None:
        """The sync started after commit ``through`` returned: answer those commits'
        writers and hooks, and sync what was committed meanwhile. If the sync failed, what
        they committed may or may not be on the disk, and may have been published: their
        writers get :class:`StoreUnavailable` saying so, and the store counts as failed."""
        self._syncing = None
        if error is None:
            self._on_disk(through)
            self._start_sync()
            return
        failed = (error if isinstance(error, StoreUnavailable)
                  else StoreUnavailable(f"store {self.store.path}: {error}"))
        gone, self._awaiting = self._awaiting, []
        for _, _, fut in gone:
            if not fut.done():
                fut.set_exception(StoreUnavailable(
                    f"{failed}; its disk sync failed: the operations may or may not be "
                    "kept, and may have been published"))
                fut.add_done_callback(_retrieved)
        self.store_failed(failed)

    def _on_disk(self, through: int) -> None:
        """The commits up to ``through`` are on the disk: answer their writers, and the
        ``on_committed`` hooks with the last one's own_seq."""
        if not self._awaiting or self._awaiting[0][0] > through:
            return
        n = next((i for i, (k, _, _) in enumerate(self._awaiting) if k > through),
                 len(self._awaiting))
        done, self._awaiting = self._awaiting[:n], self._awaiting[n:]
        for _, _, fut in done:
            if not fut.done():
                fut.set_result(None)
        self._committed_own(done[-1][1])

    def _count_own(self) -> None:
        """Count this replica's own operations logged since the last count toward the
        next snapshot, like remote ones (:meth:`applied`): a replica that mostly writes
        (web) would otherwise replay its whole log at each restart."""
        own = self.replica.own_seq
        if own > self._own_counted:
            n, self._own_counted = own - self._own_counted, own
            self.applied(n)

    def _committed_own(self, last: int) -> None:
        for hook in self.on_committed:
            hook(last)

    # ------------------------------------------------------------ deliveries

    @property
    def unlogged(self) -> int:
        """Deliveries applied to memory and not logged yet (:meth:`hold`): 0 once the store
        holds every delivery applied so far."""
        return len(self._unlogged)

    def hold(self, valid: list[bytes], marks: Mapping[str, int] | None = None) -> int:
        """The deliveries ``valid`` were applied to memory: they are logged by the next
        write to the store (:meth:`log_delivered`, or a :meth:`commit` that comes first),
        before anything this replica sends after them. Between the two, the reactions to
        them (a change event's subscriber that writes) may run, so that their operations
        are logged in the same transaction: one disk sync for the delivery and the
        reaction. ``marks``: where the transport read up to with them (a store key and a
        position, such as the stream offset of the last one), stored as decimal ASCII in
        that same transaction, whichever write it is, so a mark is never logged without the
        deliveries it covers; of several held for one key, the highest. A mark held with
        nothing to log (every delivery it covers brought nothing new: duplicates, this
        replica's own messages back, heartbeats) waits for the next write that logs
        something (a heartbeat of this replica's at the latest); until then a restart reads
        those deliveries again, and drops them again. Returns the token for
        :meth:`log_delivered`."""
        self._unlogged.extend(valid)
        for key, at in (marks or {}).items():
            self._marks[key] = max(at, self._marks.get(key, at))
        return self.restores

    def forget_mark(self, key: str) -> None:
        """Store ``key`` empty and drop its mark held (:meth:`hold`): what the transport
        reads next starts a new count (a stream declared again numbers from 0). Raises
        :class:`StoreUnavailable` if the store fails (reported)."""
        self._marks.pop(key, None)
        self._logged_marks.pop(key, None)
        with self.storing():
            self.store.put(key, b"")
        self._logged_marks[key] = None

    def mark(self, key: str) -> int | None:
        """The position logged last for ``key`` with deliveries (:meth:`hold`), None if
        none (or forgotten: :meth:`forget_mark`). Read from the store once, then kept as
        the writes log new ones (a SELECT per delivered batch cost a passive replica a
        tenth of its CPU). Raises :class:`StoreUnavailable` if the store cannot be read."""
        if key not in self._logged_marks:
            raw = self.store.get(key)
            self._logged_marks[key] = int(raw) if raw else None
        return self._logged_marks[key]

    def committed_at(self) -> int | None:
        """When this replica's store last took messages of its own (ms since the epoch, by
        this machine's wall clock; :data:`COMMITTED_AT`), None if it never did. Raises
        :class:`StoreUnavailable` if the store cannot be read."""
        raw = self.store.get(COMMITTED_AT)
        return int(raw) if raw else None

    def log_delivered(self, held: int, flags: dict[str, bytes] | None = None) -> bool:
        """Log the deliveries held since (:meth:`hold`, which returned ``held``) with their
        marks, what was written since (the replica's outgoing messages), and the store keys
        ``flags``, in one transaction, before the transport acknowledges them.

        A transaction of deliveries alone does not wait for the disk: it survives a crash
        of this process, and an OS crash or a power loss may undo it. Deliveries so undone
        are acknowledged, but the stream holds them, and this replica re-reads them from
        there, as for any gap: the next operation or heartbeat of their sender shows what
        is missing. What this replica sends after them (an operation, a heartbeat reporting
        its clock) tells the group it has them; it is committed with the disk sync that
        makes them durable with it, and published after it (``disk_sync="first"``) or
        while it runs (``"alongside"``, :meth:`_write`). If an OS crash undoes that, the
        replica reads its own messages back from the stream as it starts again, and with
        them what they told it had (the transport's restart read, and
        :meth:`~crdt_ops.replica.Replica.unmet_claims`), before it writes.

        Returns False, logging nothing, if the store failed and memory was restored from it
        since they were held (without them): the transport must have them delivered again
        (nack). Raises
        :class:`StoreUnavailable` if the store fails now, or still fails (reported: the
        same error): the transport must not acknowledge them then either."""
        if self.store_failure is not None:
            raise self.store_failure
        if self.restores != held:
            return False
        self._write(flags)
        return True

    def applied(self, n: int) -> None:
        """``n`` operations were applied and logged (remote ones, and this replica's own
        as they are committed): take a snapshot when ``snapshot_every`` have been since
        the last one (skipped if the store fails: the recovery restores from the store).
        A pumped replica encodes it in a child process (:meth:`snapshot_aside`), so that
        its event loop is held for a fork, not for the encoding."""
        self._since_snapshot += n
        if self._since_snapshot < self.settings.snapshot_every or self._aside is not None:
            return
        if self.pumping and forking.AVAILABLE:
            self._aside = asyncio.get_running_loop().create_task(self.snapshot_aside())
            return
        with contextlib.suppress(StoreUnavailable):
            self.snapshot()

    def snapshot(self) -> None:
        """Write a snapshot and drop the log it covers, on this thread. Raises
        :class:`~crdt_ops.transport.store.StoreUnavailable` if the store fails (the old
        snapshot and log stay as they were)."""
        own = self._commit_for_snapshot()
        with self.storing():
            self.store.save_snapshot(self.replica.snapshot())
        self._own_counted = own

    async def snapshot_aside(self) -> None:
        """Write a snapshot encoded in a child process (:mod:`~crdt_ops.transport.forking`)
        from memory as it was once everything applied was committed, then drop the log up
        to that commit; what is logged meanwhile stays, to be replayed onto it. Skipped,
        with the old snapshot and log kept, if the store fails or memory is restored from
        it meanwhile, or if the child fails (logged: the next one is due after another
        ``snapshot_every`` operations)."""
        try:
            own = self._commit_for_snapshot()
            through, restores = self.store.last_logged(), self.restores
            try:
                data = await forking.fork_child(self.replica.snapshot).result()
            except (OSError, forking.ChildFailed) as e:
                log.warning("replica %s: no snapshot this time: %s", self.replica_id, e)
                return
            if self.restores != restores:
                return
            with self.storing():
                self.store.save_snapshot(data, through)
            self._own_counted = own
        except StoreUnavailable:
            pass  # reported by storing(); the recovery restores from the store
        finally:
            self._aside = None

    def _commit_for_snapshot(self) -> int:
        """Commit what was applied (the snapshot covers the log up to here) and count the
        operations toward the next snapshot from zero; returns this replica's own clock."""
        self._snapshotting = True
        try:
            self.commit()
        finally:
            self._snapshotting = False
        self._since_snapshot = 0
        return self.replica.own_seq

    # ------------------------------------------------------------ closing

    def commit_before_stop(self) -> None:
        """Commit what was written; if the store fails, say that it is discarded."""
        try:
            self._write(defer=False)
        except StoreUnavailable:
            log.error("replica %s stops with its store failing: the operations it had not "
                      "accepted yet are discarded", self.replica_id)

    async def close(self) -> None:
        """Stop a store recovery and a snapshot under way, let a disk sync under way end,
        and close the store."""
        if self._aside is not None:
            self._aside.cancel()  # kills its child
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._aside
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if self._syncing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._syncing)
        if self._sync_thread is not None:
            self._sync_thread.shutdown(wait=False)
            self._sync_thread = None
        self.store.close()


def _retrieved(fut: asyncio.Future[None]) -> None:
    """Mark ``fut``'s exception retrieved: no writer may await it (a heartbeat's commit)."""
    if not fut.cancelled():
        fut.exception()


def restore(store: Store, replica_id: str, options: dict[str, Any],
            bootstrap: str = "") -> Replica:
    """The replica as ``store`` holds it (snapshot, then the log replayed); a new store
    with ``bootstrap`` (a peer's snapshot file) starts from that snapshot. Raises
    :class:`StoreUnavailable` when the store cannot be read."""
    snapshot, logged = store.load()
    if snapshot is None and not logged and bootstrap:
        replica = Replica.from_snapshot(Path(bootstrap).read_bytes(), replica_id=replica_id,
                                        **options)
        store.save_snapshot(replica.snapshot())
        log.info("replica %s bootstrapped from %s, clock %s", replica_id, bootstrap,
                 dict(replica.clock))
        return replica
    replica = (Replica.from_snapshot(snapshot, **options) if snapshot
               else Replica(replica_id, **options))
    if replica.stats["left_out"]:
        log.warning("replica %s: its snapshot held %d operations waiting for earlier ones "
                    "that its causal buffer's caps now refuse; they are read again from the "
                    "group's stream", replica_id, replica.stats["left_out"])
    replay(replica, logged)
    if logged or snapshot:
        log.info("replica %s restored: snapshot %s, %d logged messages replayed, clock %s",
                 replica_id, "yes" if snapshot else "no", len(logged), dict(replica.clock))
    return replica


def replay(replica: Replica, logged: Iterable[bytes]) -> int:
    """Take the messages of a store's log (:meth:`Store.load`) into ``replica``, in order.
    One the replica refuses now (``InvalidMessage``, ``BufferFull``: its settings changed
    since it was logged, as a lower ``--max-waiting-per-origin``) is left out, and all of
    them are said in one line: refusing to start for it would refuse every start until the
    setting went back. What they brought is missing from the clock, and the gap watch reads
    it from the group's stream again. Returns how many were left out."""
    refused: list[str] = []
    for data in logged:
        try:
            replica.receive(data)
        except (InvalidMessage, BufferFull) as e:
            refused.append(str(e))
    if refused:
        log.warning("replica %s: %d logged messages were refused as its log was replayed "
                    "(the first: %s); what they brought is read again from the group's "
                    "stream", replica.replica_id, len(refused), refused[0])
    return len(refused)


def export_snapshot(store_path: str, out: str) -> dict[str, int]:
    """Write the snapshot of the replica kept in ``store_path`` (not running) to
    ``out``, for a new replica's ``--bootstrap``. Returns its clock. Raises ValueError
    when the store holds no replica."""
    store = Store(store_path)
    try:
        snapshot, logged = store.load()
        if snapshot is None and not logged:
            raise ValueError(f"{store_path} holds no replica yet")
        replica = Replica.from_snapshot(snapshot) if snapshot else None
        if replica is None:
            rid = store.get("replica_id")
            replica = Replica(rid.decode() if rid else "unknown",  # as open() made it
                              members=members_of(store.get(MEMBERSHIP)))
        replay(replica, logged)
        Path(out).write_bytes(replica.snapshot())
        return dict(replica.clock)
    finally:
        store.close()
