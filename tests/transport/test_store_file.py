"""A store whose file is deleted while it is open writes it again, and one whose path
names another file refuses writes (crdt_ops/transport/store.py, ``Store._watch_file``):
real SQLite files, deleted and replaced on the real filesystem."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport import store as store_module
from crdt_ops.transport.store import Store, StoreLocked, StoreUnavailable


@pytest.fixture(autouse=True)
def check_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "FILE_CHECK_EVERY_S", 0.0)


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
        with pytest.raises(StoreUnavailable, match="another file took its place"):
            s.append([], messages[2:])
    with sqlite3.connect(path) as other:
        assert [r[0] for r in other.execute("SELECT name FROM sqlite_master")] == ["theirs"]
    path.rename(tmp_path / "theirs.sqlite")  # moved away: the store writes its own back
    s.append([], messages[2:])
    s.close()
    again = Store(path)
    try:
        assert again.load()[1] == messages
    finally:
        again.close()
