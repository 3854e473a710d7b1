"""Local durability for one replica in SQLite (WAL): snapshot, log, outbox.

- ``snapshot``: the replica's last snapshot (state, clock, waiting operations).
- ``log``: every message accepted since that snapshot, received or produced
  here, in order. Replaying it onto the snapshot rebuilds the replica exactly:
  delivery is deterministic and duplicates are dropped by the clock.
- ``outbox``: messages produced here: those the broker has not confirmed yet, and
  after its confirm the operations not known to be at every peer yet, kept to be sent
  again if one asks (:meth:`Store.resend`; at most :data:`MAX_KEPT_SENT` of them). A
  group's history (the stream) holds what the broker confirmed, but RabbitMQ streams
  do not fsync ("Streams", Data Safety: an uncontrolled shutdown of a node may lose
  confirmed data), and a message the broker routed while the stream's binding was gone
  reached some queues and not the stream: the kept ones fill such a gap. And other
  replicas' messages from the log, relayed for a sender that did not send them again
  (:meth:`Store.relay`), until the broker confirmed them.

A message is in the log before it is acked to the broker, and a local
operation is in the outbox before it is published, each in one transaction; a
transaction may be committed without waiting for the disk, and synced later
(:meth:`Store.append`'s ``sync``, :meth:`Store.sync`). The WAL file is written to its
full size when the store opens (:data:`WAL_PRESIZE_FREE_SHARE`), so that a commit's disk
sync never has to record a larger file.
One process at a time owns a store: a second one gets :class:`StoreLocked`.

Every read and write that SQLite refuses (the file locked by another connection
for longer than :data:`BUSY_TIMEOUT_S`, a full disk, an I/O error) raises
:class:`StoreUnavailable`; a transaction that failed was rolled back, so the file
holds all of it or none of it. What the caller does about it (the transport:
stop, retry with backoff, restore its memory from the store) is not decided here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

from crdt_ops.errors import CrdtError
from crdt_ops.transport.store_files import FilesRefused, StoreFiles
from crdt_ops.transport.store_files import StoreLocked as StoreLocked  # (its users import it here)
from crdt_ops.wire import codec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
"""
#: The log's columns beyond ``id`` and ``data`` (added to a store made before them): the
#: channel and sequence numbers of a message's operations (NULL: a heartbeat), by which
#: :meth:`Store.relay` finds what a peer asks for.
_LOG_COLUMNS = {"channel": "TEXT", "first_seq": "INTEGER", "last_seq": "INTEGER"}
#: The outbox's columns beyond ``id`` and ``data`` (added to a store made before them):
#: the channel and sequence numbers of a message's operations (NULL: a heartbeat),
#: whether the broker confirmed it (``sent``), and whether it is another replica's
#: message sent again from the log (``relayed``: :meth:`Store.relay`).
_OUTBOX_COLUMNS = {**_LOG_COLUMNS, "sent": "INTEGER NOT NULL DEFAULT 0",
                   "relayed": "INTEGER NOT NULL DEFAULT 0"}


_NO_SPAN = (None, None, None)  # a heartbeat's (no operations) in the log and outbox
#: A log or outbox row holds operations of channel ``?`` between ``?`` and ``?`` (its span
#: overlaps first..last; the parameters: channel, first, last).
_OVERLAPS = "channel = ? AND last_seq >= ? AND first_seq <= ?"

#: How long a statement waits for a lock another connection holds before it fails
#: (seconds). Short: the caller runs on an event loop, and retries with backoff.
BUSY_TIMEOUT_S = 0.5
#: Confirmed outbox rows held back for the next transaction at most (see
#: :meth:`Store.confirm`); past it they are marked in a transaction of their own.
MAX_CONFIRMED_PENDING = 1000
#: Confirmed messages of operations kept at most to be sent again (:meth:`Store.resend`);
#: past it the oldest go (:meth:`Store.prune`), and a peer that misses those finds them
#: in the group's stream only.
MAX_KEPT_SENT = 10_000
#: The newest confirmed messages of operations kept even when every member has them: a
#: replica that joins (it is counted as having the past of its admission) or one whose
#: store lost what it had reported may miss what the stream lost (:meth:`Store.prune`).
MIN_KEPT_SENT = 1_000

#: The WAL file is filled to the size it reaches before SQLite's automatic checkpoint
#: (``wal_autocheckpoint`` frames) when the store opens, and written over from its start
#: after each checkpoint; so a commit writes into blocks the file already has, and its
#: ``fdatasync`` need not also flush a new file size (fdatasync(2): a size change is
#: metadata it must write with the data). On the VM of BENCHMARKS.md ("A WAL written to
#: its size at open") that is 0.1-0.2 ms less per synced commit in the services. SQLite
#: reads a WAL only up to its last frame whose salt and checksum hold, which zeros never
#: do, and writes it over after each checkpoint in the same way
#: (https://www.sqlite.org/fileformat.html#wal_file_format; SQLite's src/wal.c). It is
#: done only where the filesystem has at least this many times the size free: it never
#: takes the last of a disk.
WAL_PRESIZE_FREE_SHARE = 10
#: The WAL format's header and frame header, bytes (https://www.sqlite.org/fileformat.html).
WAL_HEADER_BYTES, WAL_FRAME_HEADER_BYTES = 32, 24
#: Frames the WAL is sized for beyond ``wal_autocheckpoint``: SQLite checkpoints after the
#: commit that reaches that many frames, so the WAL holds that commit's other pages too (a
#: commit of one message writes 3: the log's, the outbox's and their row counters'; a larger
#: one, a snapshot's, grows the file as before, and SQLite writes it over from then on).
WAL_SPARE_FRAMES = 100

P = ParamSpec("P")
T = TypeVar("T")


class StoreUnavailable(CrdtError):
    """The store refused a read or a write (locked by another connection, disk full,
    I/O error: the message of SQLite's error is kept). Nothing of a write that raised
    this was kept. ``write()`` and ``flush()`` of the transport raise it: the
    operations of that block were not accepted, and were discarded."""


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """SQLite's errors (and the OS's) out of ``method`` as :class:`StoreUnavailable`."""
    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            store = args[0]
            raise StoreUnavailable(f"store {getattr(store, 'path', '?')}: {e}") from e
    return run


class Store:
    """The SQLite file of one replica. Not thread-safe; one process at a time.
    :attr:`wal_presized`: whether its WAL file was written to its full size as it opened
    (:data:`WAL_PRESIZE_FREE_SHARE`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._files = StoreFiles(self.path, self._reconnect)
        self.db = self._connect()
        self._files.opened()
        self.db.executescript(_SCHEMA)
        for table, columns in (("outbox", _OUTBOX_COLUMNS), ("log", _LOG_COLUMNS)):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if not set(columns) <= have:  # a store made before them
                self._add_columns(table, columns, have)
        self._wal = f"{self.path}-wal"  # SQLite's name for it (it exists while open)
        self.wal_presized = self._presize_wal()
        self._confirmed: list[int] = []  # outbox rows confirmed, not marked yet
        #: every outbox row below this id is confirmed (those in _confirmed included)
        self._unsent_from = 0
        #: how often rows were made unconfirmed again (:meth:`resend`): a publisher that
        #: fetches only above what it has in flight must look below it once more
        self.rewinds = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # its WAL open, named
        return db

    def _reconnect(self) -> sqlite3.Connection:
        """A connection to the store's file as :meth:`_connect` makes it, its WAL written
        to its full size (:meth:`_presize_wal`): for :class:`StoreFiles` when it mends."""
        db = self._connect()
        self.db = db  # (for _presize_wal, which asks it the page size)
        self.wal_presized = self._presize_wal()
        return db

    def _watch_files(self) -> None:
        """Go on with the connection :meth:`StoreFiles.check` gives, which looks after the
        store's files (crdt_ops/transport/store_files.py); its refusals and failures raise
        :class:`StoreUnavailable`."""
        try:
            self.db = self._files.check(self.db)
        except FilesRefused as e:
            raise StoreUnavailable(str(e)) from None

    def _add_columns(self, table: str, columns: Mapping[str, str], have: set[str]) -> None:
        """Add ``table``'s newer ``columns`` (name -> SQL type) and fill in the spans
        (:data:`_LOG_COLUMNS`) of the messages it holds, in one transaction."""
        with self._tx():
            for name, kind in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            rows = self.db.execute(f"SELECT id, data FROM {table}").fetchall()
            self.db.executemany(
                f"UPDATE {table} SET channel = ?, first_seq = ?, last_seq = ? WHERE id = ?",
                [(*span, i) for i, data in rows if (span := codec.span_of(bytes(data)))])

    def close(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # else they are published again
            self._mark_confirmed()
        self.db.close()
        self._files.release()

    # ------------------------------------------------------------ meta

    @_guarded
    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    @_guarded
    def put(self, key: str, value: bytes) -> None:
        """Set the key ``key`` to ``value``: in a transaction of its own, or in the one
        open (:meth:`_tx`, whose start looked after the files: a look in a transaction
        would back a deleted database file up from a connection that holds it, which
        SQLite refuses, and Python's backup retries for ever)."""
        if not self.db.in_transaction:
            self._watch_files()
        self.db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ log and outbox

    @_guarded
    def load(self) -> tuple[bytes | None, list[bytes]]:
        """The snapshot (or None) and the messages logged since, in order."""
        rows = self.db.execute("SELECT data FROM log ORDER BY id").fetchall()
        return self.get("snapshot"), [bytes(r[0]) for r in rows]

    @_guarded
    def append(self, received: Iterable[bytes], produced: Iterable[bytes],
               sync: bool = True, meta: Mapping[str, bytes] | None = None) -> int:
        """Log messages received (valid ones) and produced here, put the produced ones in
        the outbox, and set the keys ``meta`` (:meth:`put`), in one transaction. Returns the
        number of rows written. ``sync``: it is on the disk when this returns (SQLite's
        ``synchronous=FULL``); else it survives a crash of this process but an OS crash
        or a power loss may undo it (``synchronous=NORMAL`` in WAL mode:
        https://www.sqlite.org/pragma.html#pragma_synchronous), until the next
        transaction with ``sync`` makes it durable with itself (the WAL is written in
        order, and synced whole)."""
        ours = [(m, *(codec.span_of(m) or _NO_SPAN)) for m in produced]
        rows = [(m, *(codec.span_of(m) or _NO_SPAN)) for m in received] + ours
        if not rows and not meta:
            return 0
        confirmed = self._confirmed
        with self._tx(sync):
            for key, value in (meta or {}).items():
                self.put(key, value)
            self.db.executemany("INSERT INTO log (data, channel, first_seq, last_seq) "
                                "VALUES (?, ?, ?, ?)", rows)
            self.db.executemany(
                "INSERT INTO outbox (data, channel, first_seq, last_seq) VALUES (?, ?, ?, ?)",
                ours)
            if confirmed:
                self._mark(confirmed)
        self._confirmed = []
        return len(rows)

    def _mark(self, ids: list[int]) -> None:
        """In a transaction: the broker confirmed these outbox rows; heartbeats and
        others' messages relayed go, and own operations are kept to be sent again."""
        self.db.executemany("DELETE FROM outbox WHERE id = ? AND (last_seq IS NULL OR "
                            "relayed = 1)", [(i,) for i in ids])
        self.db.executemany("UPDATE outbox SET sent = 1 WHERE id = ?", [(i,) for i in ids])

    @_guarded
    def sync(self) -> None:
        """Return once every transaction committed so far is on the disk (those committed
        without ``sync``, :meth:`append`, included): an ``fdatasync`` of the WAL file, the
        sync SQLite adds at each commit with ``synchronous=FULL`` in WAL mode
        (https://www.sqlite.org/pragma.html#pragma_synchronous; a checkpoint syncs the WAL
        before it copies it). Touches no SQLite connection: it may run on another thread
        while this one commits (what that commits may or may not be synced by it). Raises
        :class:`StoreUnavailable` if the OS refuses (an I/O error: what was committed may or
        may not be on the disk)."""
        fd = os.open(self._wal, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    @_guarded
    def wal_full_size(self) -> int:
        """The bytes of a WAL holding ``wal_autocheckpoint`` frames and
        :data:`WAL_SPARE_FRAMES` more: its size when SQLite has checkpointed it and starts
        writing it over."""
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        frames = int(self.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        return WAL_HEADER_BYTES + (frames + WAL_SPARE_FRAMES) * (WAL_FRAME_HEADER_BYTES + page)

    def _presize_wal(self) -> bool:
        """Fill the WAL file with zeros up to :meth:`wal_full_size`, and sync it, where
        the filesystem has :data:`WAL_PRESIZE_FREE_SHARE` times that free. Returns whether
        the file has that size now. Best effort: if the OS refuses (a full disk meanwhile),
        the store works as SQLite alone makes it, and the next commit reports a real
        failure."""
        want = self.wal_full_size()
        try:
            fd = os.open(self._wal, os.O_RDWR)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            if size >= want:
                return True
            fs = os.fstatvfs(fd)
            if fs.f_bavail * fs.f_frsize < WAL_PRESIZE_FREE_SHARE * want:
                return False
            zeros = memoryview(bytes(want - size))
            while size < want:  # pwrite may write less than asked
                size += os.pwrite(fd, zeros[:want - size], size)
            os.fdatasync(fd)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @_guarded
    def unconfirmed(self, limit: int = 10_000, after: int = 0,
                    skip: Collection[int] = ()) -> list[tuple[int, bytes]]:
        """Outbox messages not yet confirmed by the broker, oldest first, at most ``limit``;
        ``after``: only those whose outbox id is larger, and none of ``skip`` (what a
        publisher has in flight is not fetched again)."""
        pending = set(self._confirmed).union(skip)
        # skipping rows (unconfirmed ones in flight): what it finds says nothing below
        skipping = after >= max(self._unsent_from, 1) or bool(skip)
        rows = self.db.execute(
            "SELECT id, data FROM outbox WHERE id >= ? AND sent = 0 ORDER BY id LIMIT ?",
            (max(self._unsent_from, after + 1), limit + len(pending))).fetchall()
        out = [(int(i), bytes(d)) for i, d in rows if i not in pending][:limit]
        if not skipping:
            if out:
                self._unsent_from = out[0][0]  # (what is below was all confirmed)
            elif len(rows) < limit + len(pending):  # (all confirmed: the next come after)
                top = self.db.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
                self._unsent_from = int(top or 0) + 1
        return out

    def _unconfirmed_own(self) -> list[tuple[str, int | None]]:
        """(channel, first sequence number) of each outbox message of this replica's own
        operations (not heartbeats, not other replicas' relayed) that the broker has not
        confirmed."""
        pending = set(self._confirmed)
        rows = self.db.execute("SELECT id, channel, first_seq FROM outbox WHERE sent = 0 AND "
                               "relayed = 0 AND channel IS NOT NULL").fetchall()
        return [(channel, first) for i, channel, first in rows if i not in pending]

    @_guarded
    def unconfirmed_operations(self) -> int:
        """How many outbox messages of this replica's own operations (not heartbeats, not
        other replicas' relayed) the broker has not confirmed."""
        return len(self._unconfirmed_own())

    @_guarded
    def unconfirmed_from(self) -> dict[str, int]:
        """Per channel of this replica's own operations, the first sequence number in an
        outbox message the broker has not confirmed (none: every one was)."""
        out: dict[str, int] = {}
        for channel, first in self._unconfirmed_own():
            if first is not None:
                out[channel] = min(out.get(channel, first), int(first))
        return out

    @_guarded
    def kept(self) -> int:
        """Confirmed messages kept to be sent again (see :meth:`resend`); marks the
        confirmed ones pending first (a transaction without a disk sync)."""
        self._mark_confirmed()
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 1").fetchone()[0])

    @_guarded
    def resend(self, spans: Mapping[str, tuple[int, int]]) -> int:
        """Make the kept messages holding operations of ``spans`` (channel -> first..last)
        unconfirmed again, so that the publisher sends them again; returns how many. A
        channel whose ``first`` operation the outbox no longer holds is left out: a peer
        stuck there can use none of the later ones (causal order), and sending them to the
        whole group at each request would be a flood for nothing. In a transaction without
        a disk sync (a crash that undoes it leaves them kept, and the peer asks again)."""
        self._mark_confirmed()
        n = 0
        with self._tx(sync=False):
            for ch, (first, last) in spans.items():
                if not self._holds("outbox", ch, first):
                    continue
                n += self.db.execute(
                    f"UPDATE outbox SET sent = 0 WHERE sent = 1 AND {_OVERLAPS}",
                    (ch, first, last)).rowcount
        self._unsent_from = 0
        self.rewinds += 1
        return n

    @_guarded
    def relay(self, spans: Mapping[str, tuple[int, int]], limit: int = MAX_KEPT_SENT) -> int:
        """Put the logged messages of other replicas that hold operations of ``spans``
        (channel -> first..last), the first ``limit`` of each channel, in the outbox, marked
        relayed, so that the publisher sends them again for their sender
        (:mod:`crdt_ops.transport.relay`); returns how many.
        Once the broker confirmed them they leave the outbox. A channel whose ``first``
        operation the log no longer holds (a snapshot dropped the log before it) is left
        out, as :meth:`resend` leaves it; so are the messages of a channel already waiting
        in the outbox as relayed. In a transaction without a disk sync (a crash that
        undoes it loses nothing: the peer asks again)."""
        self._mark_confirmed()
        n = 0
        with self._tx(sync=False):
            for ch, (first, last) in spans.items():
                if not self._holds("log", ch, first) or self.db.execute(
                        "SELECT 1 FROM outbox WHERE relayed = 1 AND sent = 0 AND channel = ? "
                        "LIMIT 1", (ch,)).fetchone() is not None:
                    continue
                n += self.db.execute(
                    "INSERT INTO outbox (data, channel, first_seq, last_seq, relayed) "
                    f"SELECT data, channel, first_seq, last_seq, 1 FROM log WHERE {_OVERLAPS} "
                    "ORDER BY id LIMIT ?",
                    (ch, first, last, limit)).rowcount
        return n

    @_guarded
    def pending(self, spans: Mapping[str, tuple[int, int]]) -> int:
        """How many outbox messages holding operations of ``spans`` (channel ->
        first..last) wait to be published (not confirmed yet, or made so by
        :meth:`resend`)."""
        return sum(int(self.db.execute(
            f"SELECT COUNT(*) FROM outbox WHERE sent = 0 AND {_OVERLAPS}",
            (ch, first, last)).fetchone()[0])
            for ch, (first, last) in spans.items())

    def _holds(self, table: str, channel: str, seq: int) -> bool:
        """Whether ``table`` (the log or the outbox) holds a message with operation
        ``seq`` of ``channel``."""
        return self.db.execute(f"SELECT 1 FROM {table} WHERE {_OVERLAPS} LIMIT 1",
                               (channel, seq, seq)).fetchone() is not None

    @_guarded
    def drop_relayed(self) -> int:
        """Drop the relayed messages not published yet (:meth:`relay`), for a replica that
        may no longer relay (``crdt_ops.transport.auth.may_relay``: its ``--auth`` changed);
        returns how many."""
        with self._tx(sync=False):
            return int(self.db.execute("DELETE FROM outbox WHERE relayed = 1").rowcount)

    @_guarded
    def prune(self, held: Mapping[str, int], keep: int = MAX_KEPT_SENT,
              least: int = MIN_KEPT_SENT) -> int:
        """Drop the kept messages whose operations every peer has (``held``: channel ->
        last seq, :meth:`Replica.held_by_peers <crdt_ops.replica.Replica.held_by_peers>`)
        but the newest ``least``, and beyond the newest ``keep`` the oldest; returns how
        many went. In a transaction without a disk sync."""
        self._mark_confirmed()
        n = 0
        with self._tx(sync=False):
            if (over := self._kept_after(keep)) is not None:
                n += self.db.execute("DELETE FROM outbox WHERE sent = 1 AND id <= ?",
                                     (over,)).rowcount
            if (below := self._kept_after(least)) is not None:
                n += sum(self.db.execute(
                    "DELETE FROM outbox WHERE sent = 1 AND id <= ? AND channel = ? "
                    "AND last_seq <= ?", (below, ch, last)).rowcount
                    for ch, last in held.items() if last)
        return n

    def _kept_after(self, newest: int) -> int | None:
        """The id of the newest kept message older than the ``newest`` newest (None: there
        are no more than that)."""
        row = self.db.execute("SELECT id FROM outbox WHERE sent = 1 ORDER BY id DESC "
                              "LIMIT 1 OFFSET ?", (newest,)).fetchone()
        return None if row is None else int(row[0])

    def confirm(self, ids: Iterable[int]) -> None:
        """The broker confirmed these outbox messages: they are no longer
        :meth:`unconfirmed`, and are marked so (heartbeats deleted; operations kept until
        :meth:`prune`) by the next transaction (:meth:`append`: a write or a delivery
        logged), or, past :data:`MAX_CONFIRMED_PENDING` of them, by a
        transaction of their own that does not wait for the disk. No transaction and no
        disk sync of their own, for each message published. If a crash (or a power loss
        undoing a transaction with ``synchronous=NORMAL``: SQLite's WAL stays consistent
        but may lose its latest transactions,
        https://www.sqlite.org/pragma.html#pragma_synchronous) comes first, they are
        published again after the restart and the replicas drop them as duplicates.
        Raises :class:`StoreUnavailable` only if that transaction of their own fails
        (they stay pending)."""
        self._confirmed.extend(ids)
        if len(self._confirmed) > MAX_CONFIRMED_PENDING:
            self._mark_confirmed()

    @_guarded
    def _mark_confirmed(self) -> None:
        """Mark the confirmed rows pending, in a transaction without a disk sync."""
        if not self._confirmed:
            return
        with self._tx(sync=False):
            self._mark(self._confirmed)
        self._confirmed = []

    @_guarded
    def save_snapshot(self, snapshot: bytes, through: int | None = None) -> None:
        """Replace the snapshot and drop the log it covers, atomically: the whole log, or
        (``through``, a :meth:`last_logged` id) the messages logged up to that one, when
        the snapshot was taken then and what was logged since must be replayed onto it."""
        with self._tx():
            self.put("snapshot", snapshot)
            if through is None:
                self.db.execute("DELETE FROM log")
            else:
                self.db.execute("DELETE FROM log WHERE id <= ?", (through,))

    @_guarded
    def last_logged(self) -> int:
        """The id of the newest message in the log (0: none)."""
        row = self.db.execute("SELECT MAX(id) FROM log").fetchone()
        return int(row[0] or 0)

    @_guarded
    def log_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM log").fetchone()[0])

    def _tx(self, sync: bool = True) -> _Transaction:
        self._watch_files()
        return _Transaction(self.db, sync)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; without ``sync``, with
    ``synchronous=NORMAL`` (no disk sync at the commit), restored to FULL after."""

    def __init__(self, db: sqlite3.Connection, sync: bool = True) -> None:
        self.db = db
        self.sync = sync

    def __enter__(self) -> None:
        if not self.sync:
            self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            self._restore()

    def _restore(self) -> None:
        if not self.sync:
            self.db.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
