"""The store's WAL file written to its full size when the store opens
(crdt_ops/transport/store.py, ``WAL_PRESIZE_FREE_SHARE``): it has that size from the
start, commits write it over after each checkpoint instead of growing it, and a process
killed with it pre-sized loses no committed transaction. No broker: the store alone, and a
real process killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from crdt_ops.transport.store import WAL_SPARE_FRAMES, Store
from tests.transport.test_store_failure import small_filesystem

#: Commits enough to pass SQLite's automatic checkpoint (1,000 frames) at least twice:
#: each logs one message and puts it in the outbox (three pages with the row counters).
COMMITS = 1_500


def _wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def test_the_wal_has_its_full_size_once_the_store_opens(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    try:
        assert store.wal_presized
        assert store.wal_full_size() == 32 + (1000 + WAL_SPARE_FRAMES) * (24 + 4096)
        assert _wal(store.path).stat().st_size == store.wal_full_size()
    finally:
        store.close()


def test_commits_write_the_wal_over_instead_of_growing_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite")
    try:
        full = store.wal_full_size()
        for i in range(COMMITS):
            store.append([], [b"m%d" % i], sync=False)
            assert _wal(store.path).stat().st_size == full, f"grown at commit {i}"
        assert [m for _, m in store.unconfirmed(limit=COMMITS + 1)][-1] == b"m%d" % (COMMITS - 1)
    finally:
        store.close()


def test_a_process_killed_with_a_presized_wal_loses_no_committed_transaction(
        tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from crdt_ops.transport.store import WAL_SPARE_FRAMES, Store
        store = Store({str(path)!r})
        assert store.wal_presized
        for i in range({COMMITS}):
            store.append([b"in%d" % i], [b"out%d" % i])
        print(os.path.getsize({str(path)!r} + "-wal"), store.wal_full_size(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == -signal.SIGKILL, done.stderr
    size, full = map(int, done.stdout.split())
    assert size == full, "the WAL was not at its full size when the process was killed"
    assert _wal(path).exists(), "the killed process left no WAL to recover"
    again = Store(path)
    try:
        _, logged = again.load()
        expected = [m for i in range(COMMITS) for m in (b"in%d" % i, b"out%d" % i)]
        assert logged == expected
        assert [m for _, m in again.unconfirmed(limit=2 * COMMITS)] == \
            [b"out%d" % i for i in range(COMMITS)]
    finally:
        again.close()


def test_a_nearly_full_filesystem_gets_no_presized_wal(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as mnt:  # 4 MiB: less than ten times the WAL's size
        store = Store(mnt / "r.sqlite")
        try:
            assert not store.wal_presized
            assert _wal(store.path).stat().st_size < store.wal_full_size()
            store.append([b"in"], [b"out"])
            assert store.load()[1] == [b"in", b"out"]
        finally:
            store.close()
