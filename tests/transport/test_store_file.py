"""A store whose files are deleted while it is open mends them, and one whose database's name
names another file refuses writes (crdt_ops/transport/store_files.py): real SQLite files,
deleted and replaced on the real filesystem, and a process killed after it."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport import store_files
from crdt_ops.transport.store import Store, StoreLocked, StoreUnavailable


@pytest.fixture(autouse=True)
def check_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_files, "CHECK_EVERY_S", 0.0)


@pytest.fixture
def messages() -> Iterator[list[bytes]]:
    r = Replica("a")
    out: list[bytes] = []
    for _ in range(6):
        r.counter("n").increment()
        out += r.outgoing()
    yield out


def test_a_deleted_store_is_written_again_with_all_it_held(
        tmp_path: Path, messages: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dir" / "a.sqlite"
    s = Store(path)
    s.append([], messages[:3])
    s.put("k", b"v")
    shutil.rmtree(path.parent)  # the file, its WAL, its lock: all gone
    s.append([], messages[3:5])  # the first transaction after it writes the file again
    assert path.exists() and "deleted while its replica ran" in caplog.text
    with pytest.raises(StoreLocked):  # the lock was taken again too
        Store(path)
    s.append([], messages[5:])
    s.close()
    again = Store(path)
    try:
        assert again.load() == (None, messages)
        assert [body for _, body in again.unconfirmed()] == messages
        assert again.get("k") == b"v"
    finally:
        again.close()


def test_a_deleted_database_file_beside_its_wal_is_written_again(
        tmp_path: Path, messages: list[bytes]) -> None:
    """Only the main file deleted: the old WAL, which SQLite would apply to the copy if it
    stayed beside it, goes with the old connection."""
    path = tmp_path / "a.sqlite"
    s = Store(path)
    s.append([], messages[:4])
    path.unlink()
    s.append([], messages[4:])
    s.close()
    again = Store(path)
    try:
        assert again.load()[1] == messages
        assert again.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        again.close()


def test_another_file_in_its_place_is_not_written_over(
        tmp_path: Path, messages: list[bytes]) -> None:
    path = tmp_path / "a.sqlite"
    s = Store(path)
    s.append([], messages[:2])
    path.unlink()
    with sqlite3.connect(path) as other:  # someone else's file
        other.execute("CREATE TABLE theirs (x)")
    for _ in range(2):  # refused at every transaction, nothing written
        with pytest.raises(StoreUnavailable, match="another file took its name"):
            s.append([], messages[2:])
    with pytest.raises(StoreUnavailable):  # (a key's write too: the store's probe)
        s.put("k", b"v")
    other = sqlite3.connect(path)  # opened while the store runs: its WAL is not applied
    try:
        assert [r[0] for r in other.execute("SELECT name FROM sqlite_master")] == ["theirs"]
        assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        other.close()
    path.rename(tmp_path / "theirs.sqlite")  # moved away: the store writes its own back
    s.append([], messages[2:])
    s.close()
    again = Store(path)
    try:
        assert again.load()[1] == messages
    finally:
        again.close()


def test_a_deleted_wal_is_checkpointed_and_begun_again(
        tmp_path: Path, messages: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """The WAL alone deleted: its frames (acknowledged writes) would be lost with the
    process; they are moved into the database file, and a new WAL begun."""
    path = tmp_path / "a.sqlite"
    s = Store(path)
    s.append([], messages[:4])
    Path(f"{path}-wal").unlink()
    s.append([], messages[4:])
    assert "its WAL file was deleted" in caplog.text
    s.sync()  # the WAL by its name again (what --disk-sync alongside syncs)
    copy = tmp_path / "copy.sqlite"  # what a new process would find on the disk now
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    s.close()
    again = Store(copy)
    try:
        assert again.load()[1] == messages
    finally:
        again.close()


def test_a_deleted_lock_file_is_made_and_locked_again(
        tmp_path: Path, messages: list[bytes]) -> None:
    path = tmp_path / "a.sqlite"
    s = Store(path)
    Path(f"{path}.lock").unlink()
    s.append([], messages[:1])
    with pytest.raises(StoreLocked):  # a second process is refused again
        Store(path)
    s.close()


def test_the_files_are_never_looked_at_inside_a_transaction(
        tmp_path: Path, messages: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """A key set inside a transaction (a commit of the replica's own messages sets
    ``committed_at_ms``; a snapshot is a key) looked at the files: with the database file
    deleted just then, the store backed it up from a connection holding a transaction,
    which SQLite refuses and Python's backup retries for ever, and the replica froze (6 of
    40 runs of a tight commit loop whose file was deleted)."""
    looked_in_tx: list[bool] = []
    real = store_files.StoreFiles.check

    def check(self: store_files.StoreFiles, db: sqlite3.Connection) -> sqlite3.Connection:
        looked_in_tx.append(db.in_transaction)
        return real(self, db)

    monkeypatch.setattr(store_files.StoreFiles, "check", check)
    path = tmp_path / "a.sqlite"
    s = Store(path)
    s.append([], messages[:3], meta={"committed_at_ms": b"1"})
    s.save_snapshot(b"snap")
    s.put("k", b"v")
    path.unlink()
    s.append([], messages[3:], meta={"committed_at_ms": b"2"})  # written back first
    s.close()
    assert looked_in_tx and not any(looked_in_tx)
    again = Store(path)
    try:
        assert again.load() == (b"snap", messages[3:]) and again.get("k") == b"v"
    finally:
        again.close()
