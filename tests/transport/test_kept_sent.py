"""The outbox keeps a replica's confirmed operations until every peer has them, and sends
them again when a peer asks (Store.resend, Store.prune, transport.resend.Resender); a
store made before it kept them opens with its outbox as it was."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
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


def _published(st: Store, msgs: list[bytes]) -> None:
    """``msgs`` written to the outbox, and confirmed by the broker."""
    st.append([], msgs)
    st.confirm([i for i, _ in st.unconfirmed()])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(tmp_path / "s.sqlite")
    yield st
    st.close()


def test_confirmed_operations_are_kept_and_heartbeats_go(store: Store) -> None:
    _, msgs = _messages(3)
    _published(store, msgs)
    assert _unsent(store) == []  # (confirmed, not marked yet)
    assert store.kept() == 3 and _unsent(store) == []  # (the heartbeat's row went)
    # asked for seq 2..3: their two messages go out again, in their order
    assert store.resend({"r": (2, 3)}) == 2
    assert _unsent(store) == msgs[1:3]
    assert store.resend({"r": (1, 1), "other": (1, 5)}) == 1
    assert _unsent(store) == msgs[:3]


def test_what_every_peer_has_is_pruned_and_at_most_keep_are_kept(store: Store) -> None:
    _, msgs = _messages(5)
    _published(store, msgs)
    assert store.prune({"r": 5}, least=4) == 1  # all but the newest 4, though all held
    assert store.prune({"r": 2}, least=0) == 1
    assert store.kept() == 3
    assert store.prune({}, keep=1) == 2  # the two oldest over the bound, held or not
    # 1..4 are gone: a peer stuck at 1 could use none of 5, which is not sent for it
    assert store.resend({"r": (1, 5)}) == 0
    assert store.resend({"r": (5, 5)}) == 1
    assert _unsent(store) == [msgs[4]]
    assert store.prune({"r": 5}, least=0) == 0  # (unconfirmed again: not pruned)


def test_unconfirmed_rows_are_found_behind_many_kept_ones(store: Store) -> None:
    _, msgs = _messages(50)
    _published(store, msgs[:40])
    assert _unsent(store) == []
    store.append([], msgs[40:])
    assert _unsent(store) == msgs[40:]
    assert [b for _, b in store.unconfirmed(limit=3)] == msgs[40:43]
    # a fetch skips the kept rows below the first unconfirmed one from then on (the
    # query's floor): a publish does not read every kept row again
    assert store._unsent_from == store.unconfirmed()[0][0] > 40
    first = store.unconfirmed()[0][0]
    assert [b for _, b in store.unconfirmed(after=first + 1)] == msgs[42:]  # (in flight: 40, 41)
    assert store._unsent_from == first  # (rows skipped: the floor stays)


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
