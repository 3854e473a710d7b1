"""The outbox keeps a replica's confirmed operations until every peer has them, and sends
them again when a peer asks (Store.resend, Store.prune, transport.resend.Resender); a
store made before it kept them opens with its outbox as it was."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from crdt_ops import Replica
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.resend import Resender
from crdt_ops.transport.store import Store


def _messages(n: int, rid: str = "r") -> tuple[Replica, list[bytes]]:
    """Replica ``rid`` and ``n`` batches of one operation each, then a heartbeat."""
    r = Replica(rid, members=[rid, "p"])
    out = []
    for _ in range(n):
        r.counter("n").increment()
        out += r.outgoing()
    r.heartbeat()
    return r, out + r.outgoing()


def _unsent(st: Store) -> list[bytes]:
    return [body for _, body in st.unconfirmed()]


def test_confirmed_operations_are_kept_and_heartbeats_go(tmp_path: Path) -> None:
    _, msgs = _messages(3)
    st = Store(tmp_path / "s.sqlite")
    try:
        st.append([], msgs)
        st.confirm([i for i, _ in st.unconfirmed()])
        assert _unsent(st) == []
        assert st.kept() == 3 and _unsent(st) == []  # (the heartbeat's row went)
        # asked for seq 2..3: their two messages go out again, in their order
        assert st.resend({"r": (2, 3)}) == 2
        assert _unsent(st) == msgs[1:3]
        assert st.resend({"r": (1, 1), "other": (1, 5)}) == 1
        assert _unsent(st) == msgs[:3]
    finally:
        st.close()


def test_what_every_peer_has_is_pruned_and_at_most_keep_are_kept(tmp_path: Path) -> None:
    _, msgs = _messages(5)
    st = Store(tmp_path / "s.sqlite")
    try:
        st.append([], msgs)
        st.confirm([i for i, _ in st.unconfirmed()])
        st.append([b"x"], [])
        assert st.prune({"r": 5}, least=4) == 1  # all but the newest 4, though all held
        assert st.prune({"r": 2}, least=0) == 1
        assert st.kept() == 3
        assert st.prune({}, keep=1) == 2  # the two oldest over the bound, held or not
        assert st.resend({"r": (1, 5)}) == 1
        assert _unsent(st) == [msgs[4]]
        assert st.prune({"r": 5}, least=0) == 0  # (unconfirmed again: not pruned)
    finally:
        st.close()


def test_unconfirmed_rows_are_found_behind_many_kept_ones(tmp_path: Path) -> None:
    _, msgs = _messages(50)
    st = Store(tmp_path / "s.sqlite")
    try:
        st.append([], msgs[:40])
        st.confirm([i for i, _ in st.unconfirmed()])
        assert _unsent(st) == []
        st.append([], msgs[40:])
        assert _unsent(st) == msgs[40:]
        assert [b for _, b in st.unconfirmed(limit=3)] == msgs[40:43]
    finally:
        st.close()


def test_a_store_made_before_the_outbox_kept_what_it_sent_opens_as_it_was(
        tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _, msgs = _messages(2)
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "data BLOB NOT NULL);")
    db.executemany("INSERT INTO outbox (data) VALUES (?)", [(m,) for m in msgs[:2]])
    db.commit()
    db.close()
    st = Store(path)
    try:
        assert _unsent(st) == msgs[:2]  # published as before
        st.confirm([i for i, _ in st.unconfirmed()])
        assert st.kept() == 2  # and kept: their channel and numbers were filled in
        assert st.resend({"r": (2, 2)}) == 1
    finally:
        st.close()


def test_the_resender_answers_once_per_patience_and_says_so(
        offline_durable: DurableReplica, caplog: pytest.LogCaptureFixture) -> None:
    d = offline_durable
    d.replica.found()
    d.commit()
    for _ in range(3):
        d.replica.counter("n").increment()
        d.commit()
    st = d.store
    st.confirm([i for i, _ in st.unconfirmed()])
    asker = Replica("p")
    asker.ask({"r": (1, 4)})
    resender = Resender(d, patience_s=5.0)
    caplog.set_level(logging.WARNING, "crdt_ops.transport.resend")
    d.replica.receive(asker.clock_message())
    resender.tick(100.0)
    assert resender.resent == 4 and len(st.unconfirmed()) == 4
    assert "p asked for its operations r 1..4" in caplog.text
    st.confirm([i for i, _ in st.unconfirmed()])
    d.replica.receive(asker.clock_message())
    resender.tick(102.0)  # within the patience: not again
    assert st.unconfirmed() == [] and resender.resent == 4
    d.replica.receive(asker.clock_message())
    resender.tick(106.0)
    assert resender.resent == 8
    # asked for what it no longer keeps
    st.confirm([i for i, _ in st.unconfirmed()])
    st.prune({"r": 4}, least=0)
    d.replica.receive(asker.clock_message())
    resender.tick(112.0)
    assert "which it no longer keeps" in caplog.text
