"""The files of a store under a running replica: its SQLite database, the database's WAL and
``-shm`` files, and its lock file, each checked to be the one the store opened.

SQLite in WAL mode goes on writing to files deleted while open (seen with SQLite 3.40), so
a store whose files a cleaner of ``/tmp`` or an operator deleted would lose everything
they held at the next start, acknowledged writes not yet published included; and a lock
file deleted lets a second process open the same store. :class:`StoreFiles` looks at the
names (at most every :data:`CHECK_EVERY_S`, from the store's transactions and writes) and:

- a **deleted database** is written to its name again from the open connection (SQLite's
  online backup copies what a connection sees, its WAL's frames included:
  https://www.sqlite.org/backup.html); the store goes on with a connection to the copy;
- a **deleted or replaced WAL** (its frames not yet in the database file, but in the
  open, unnamed one) is checkpointed into the database file, and the store reconnects,
  with a new WAL;
- a **deleted lock file** is made again and locked (if another process got there first,
  writes are refused: two processes must not write one store);
- a **database replaced** by another file is not written over: writes are refused until
  that file is moved away (the store's own is then written back), and the WAL and
  ``-shm`` names this store's connection uses are removed, so that nothing applies them
  to that other file.

Closing a connection whose database was deleted or moved removes nothing by name (seen with
SQLite 3.40: it neither checkpoints nor deletes the WAL then), so the old connection is
closed after the copy holds the name. Nothing here is thread-safe: the store's one thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from crdt_ops.errors import CrdtError

log = logging.getLogger(__name__)

#: Seconds between two looks at a store's file names (:meth:`StoreFiles.check`).
CHECK_EVERY_S = 1.0

FileId = tuple[int, int]  # (device, inode)


class FilesRefused(CrdtError):
    """The store's files are not its own any more (another file took the database's name,
    or another process its lock): writes must be refused. The store turns it into its
    ``StoreUnavailable``."""


class StoreLocked(CrdtError):
    """Another process already runs a replica on this store."""


def file_id(path: str | os.PathLike[str]) -> FileId | None:
    """``(device, inode)`` of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def take_lock(path: Path) -> IO[str]:
    """Open and lock (``flock``, exclusive) ``<path>.lock``; raises :class:`StoreLocked` if
    another process holds it."""
    lock = open(f"{path}.lock", "a+")  # noqa: SIM115 (held for the store's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreLocked(f"{path} is in use by another process; stop it first, or give "
                          "this replica its own --store and --replica-id") from None
    return lock


class StoreFiles:
    """The names of one store's files, and what it opened under them. ``connect`` makes a
    connection to ``path`` as the store uses it (pragmas set, its WAL opened)."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]) -> None:
        self.path = path
        self.wal, self.shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        self._connect = connect
        self.lock = take_lock(path)
        self._checked_at = time.monotonic()
        self._refused: str | None = None  # while the files are not ours: why
        self._ids: dict[Path, FileId | None] = {}

    def opened(self) -> None:
        """Note the files a connection just made opened (after :attr:`connect`)."""
        self._ids = {p: file_id(p) for p in (self.path, self.wal, self.shm)}

    def check(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """The connection to go on with: ``db``, or a new one after a file was deleted (see
        the module). Looks at most every :data:`CHECK_EVERY_S`, and at every call while
        refusing. Raises :class:`FilesRefused` while the files are not the store's own;
        sqlite3.Error or OSError if mending them failed (tried again at the next call)."""
        now = time.monotonic()
        if self._refused is None and now - self._checked_at < CHECK_EVERY_S:
            return db
        self._checked_at = now
        found = file_id(self.path)
        if found is not None and found != self._ids[self.path]:
            self._refuse_replaced()
        self._keep_lock()
        self._refused = None
        if found is None:
            return self._write_back(db)
        if file_id(self.wal) != self._ids[self.wal]:
            return self._reopen(db)
        return db

    def _refuse_replaced(self) -> None:
        for p in (self.wal, self.shm):  # ours must not be applied to that other file
            if (mine := self._ids.get(p)) is not None and file_id(p) == mine:
                p.unlink(missing_ok=True)
        if self._refused is None:
            log.error("store %s: another file took its name while this replica ran; its "
                      "writes are refused until that file is moved away (its own is then "
                      "written there again), or the replica is stopped", self.path)
        self._refused = (f"store {self.path}: another file took its name; writes are refused "
                         "until it is moved away or the replica is stopped")
        raise FilesRefused(self._refused)

    def _keep_lock(self) -> None:
        held = os.fstat(self.lock.fileno())
        if file_id(f"{self.path}.lock") == (held.st_dev, held.st_ino):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = take_lock(self.path)
        except StoreLocked:
            self._refused = (f"store {self.path}: its lock file was deleted and another "
                             "process took a new one; writes are refused: stop one of them")
            raise FilesRefused(self._refused) from None
        self.lock.close()
        self.lock = lock
        log.warning("store %s: its lock file was deleted while the replica ran; locked again",
                    self.path)

    def _write_back(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """Copy ``db``, whose file was deleted, to the store's name; connect to the copy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(f"{self.path.name}.restoring")
        try:
            with contextlib.closing(sqlite3.connect(part)) as copy:
                db.backup(copy)
            for p in (self.wal, self.shm):  # old ones left by name: not for the copy
                if (mine := self._ids.get(p)) is not None and file_id(p) == mine:
                    p.unlink(missing_ok=True)
            os.replace(part, self.path)
        finally:
            for p in (part, Path(f"{part}-journal")):
                p.unlink(missing_ok=True)
        sync_dir(self.path.parent)
        try:
            new = self._connect()
        except BaseException:
            self.path.unlink(missing_ok=True)  # deleted again: the next call tries again
            raise
        db.close()  # (its file was deleted: SQLite removes nothing by name)
        self.opened()
        log.warning("store %s was deleted while its replica ran; written there again from "
                    "the open database (nothing of it lost)", self.path)
        return new

    def _reopen(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """The WAL's name no longer names the WAL ``db`` writes: move what it holds into the
        database file (a checkpoint, synced), close ``db`` (it removes no file by name that
        is not its own: the WAL's name holds none or another's) and connect again."""
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
        except sqlite3.ProgrammingError:  # closed by an earlier call, whose connect failed
            pass
        new = self._connect()
        self.opened()
        log.warning("store %s: its WAL file was deleted while the replica ran; its frames "
                    "were written into the database and a new WAL begun (nothing lost)",
                    self.path)
        return new

    def release(self) -> None:
        """Unlock and close the lock file (the store closes)."""
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def sync_dir(path: Path) -> None:
    """fsync directory ``path``: the names made, renamed or removed in it are on the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["CHECK_EVERY_S", "FilesRefused", "StoreFiles", "StoreLocked", "file_id",
           "sync_dir", "take_lock"]
