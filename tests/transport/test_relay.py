"""Repair by any holder: a replica that delivered operations another asks their sender
for publishes them again from its log when the sender does not (Store.relay,
transport.relay.Relayer, auth.may_relay); a store made before the log kept spans opens
and relays what it logged."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from crdt_ops import Replica
from crdt_ops.transport.auth import may_relay
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from crdt_ops.transport.relay import Relayer
from crdt_ops.transport.store import Store


def _written(n: int, rid: str = "s") -> list[bytes]:
    """``n`` batches of one operation each by replica ``rid`` (of an open group)."""
    s = Replica(rid)
    out = []
    for _ in range(n):
        s.counter("n").increment()
        out += s.outgoing()
    return out


def _unsent(st: Store) -> list[bytes]:
    return [body for _, body in st.unconfirmed()]


def test_the_log_s_messages_of_a_range_are_relayed_once_until_confirmed(
        tmp_path: Path) -> None:
    st = Store(tmp_path / "s.sqlite")
    try:
        msgs = _written(4)
        st.append(msgs, [])
        assert st.relay({"s": (2, 3)}) == 2
        assert _unsent(st) == msgs[1:3]
        assert st.relay({"s": (2, 3)}) == 0  # waiting in the outbox already
        st.confirm([i for i, _ in st.unconfirmed()])
        assert st.kept() == 0  # confirmed relayed messages leave the outbox
        assert st.relay({"s": (1, 9), "x": (1, 1)}, limit=1) == 1  # the first only
        st.confirm([i for i, _ in st.unconfirmed()])
        assert st.relay({"s": (1, 9), "x": (1, 1)}) == 4
        assert st.drop_relayed() == 4 and _unsent(st) == []
        assert st.relay({"s": (1, 9)}) == 4
        st.confirm([i for i, _ in st.unconfirmed()])
        st.save_snapshot(b"snap")  # the log dropped: nothing left to relay
        assert st.relay({"s": (1, 4)}) == 0 and _unsent(st) == []
    finally:
        st.close()


def test_a_store_made_before_the_log_kept_spans_relays_what_it_logged(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    msgs = _written(2)
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "data BLOB NOT NULL);")
    db.executemany("INSERT INTO log (data) VALUES (?)", [(m,) for m in msgs])
    db.commit()
    db.close()
    st = Store(path)
    try:
        assert st.load()[1] == msgs
        assert st.relay({"s": (1, 2)}) == 2 and _unsent(st) == msgs
    finally:
        st.close()


def _history() -> list[bytes]:
    """Founder s's messages: the group founded, r, q and p admitted (operations 1..4), then
    3 batches of one operation each (5..7)."""
    s = Replica("s")
    s.found()
    for rid in "rqp":
        s.admit(rid)
    out = s.outgoing()
    for _ in range(3):
        s.counter("n").increment()
        out += s.outgoing()
    return out


def _holder(tmp_path: Path, rid: str, msgs: list[bytes]) -> DurableReplica:
    """Member ``rid`` that delivered and logged ``msgs``."""
    d = DurableReplica.open(Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g",
                                     replica_id=rid, store=str(tmp_path / f"{rid}.sqlite")))
    for m in msgs:
        assert d.replica.receive(m)
    d.hold(msgs)
    d.commit()
    return d


def _asking() -> bytes:
    """p's heartbeat asking s for 5..7 (p delivered s 1..4)."""
    p = Replica("p")
    for m in _history()[:1]:
        p.receive(m)
    p.ask({"s": (5, 7)})
    return p.clock_message()


def test_the_holders_answer_in_turn_after_the_sender_s_patience(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msgs = _history()
    r, q = _holder(tmp_path, "r", msgs), _holder(tmp_path, "q", msgs)
    caplog.set_level(logging.WARNING, "crdt_ops.transport.relay")
    try:
        for d in r, q:  # each knows the other holds them
            d.replica.receive((q if d is r else r).replica.clock_message())
        assert r.replica.holders("s", 5) == ["q", "r", "s"]
        relayers = {d.replica_id: Relayer(d, patience_s=5.0, heartbeat_s=1.0)
                    for d in (q, r)}

        def tick(now: float) -> dict[str, int]:
            for d in q, r:
                d.replica.receive(_asking())
                relayers[d.replica_id].tick(now)
            return {rid: rel.relayed for rid, rel in relayers.items()}

        assert tick(100.0) == {"q": 0, "r": 0}  # the sender's turn
        assert tick(104.0) == {"q": 0, "r": 0}
        assert tick(105.0) == {"q": 3, "r": 0}  # q first (by id), then r
        assert "p asked for operations s 5..7, which their sender did not send" in caplog.text
        assert len(q.store.unconfirmed()) == 3
        assert tick(108.0) == {"q": 3, "r": 0}  # within the patience: not again
        # still asked: r's turn came; q's are still in its outbox, not published again
        assert tick(110.0) == {"q": 3, "r": 3}
        q.store.confirm([i for i, _ in q.store.unconfirmed()])
        assert tick(115.0) == {"q": 6, "r": 3}  # (r's are still in its outbox)
        # answered: the asker stops asking, and a request no longer heard is forgotten
        for rel in relayers.values():
            rel.tick(121.0)
        assert not any(rel._requests for rel in relayers.values())
    finally:
        r.store.close()
        q.store.close()


def test_a_request_answered_is_relayed_by_no_later_holder(tmp_path: Path) -> None:
    msgs = _history()
    r, q = _holder(tmp_path, "r", msgs), _holder(tmp_path, "q", msgs)
    try:
        for d in r, q:
            d.replica.receive((q if d is r else r).replica.clock_message())
        relayers = {d.replica_id: Relayer(d, patience_s=5.0, heartbeat_s=1.0)
                    for d in (q, r)}
        for now in range(100, 120):
            for d in q, r:
                if now <= 106:  # q's relay at 105 answered it: the asker's ask stops
                    d.replica.receive(_asking())
                relayers[d.replica_id].tick(float(now))
        assert (relayers["q"].relayed, relayers["r"].relayed) == (3, 0)
        # the sender answered within its turn: no holder relays at all
        relayers = {d.replica_id: Relayer(d, patience_s=5.0, heartbeat_s=1.0)
                    for d in (q, r)}
        for now in range(200, 220):
            for d in q, r:
                if now <= 202:
                    d.replica.receive(_asking())
                relayers[d.replica_id].tick(float(now))
        assert (relayers["q"].relayed, relayers["r"].relayed) == (0, 0)
    finally:
        r.store.close()
        q.store.close()


def test_a_replica_may_relay_only_where_its_peers_accept_it() -> None:
    def s(**kw: str) -> Settings:
        return Settings(amqp_url="amqp://web:pw@127.0.0.1:1/", group="g", replica_id="r", **kw)

    assert may_relay(s())
    assert not may_relay(s(signing_key="k.json"))
    assert not may_relay(s(auth="user-id", trusted_users="ops"))
    assert may_relay(s(auth="user-id", trusted_users="ops,web"))
    assert not may_relay(s(auth="signature", keyring="ring.json"))


class _Request:
    """A stand-in for a durable replica as a :class:`Relayer` sees it, in a simulation of
    one request: its replica hears the asker's request (``pending``) and names the holders;
    its store records each relay (and the asker gets it ``latency_s`` later)."""

    def __init__(self, sim: _Simulation, rid: str, holders: list[str]) -> None:
        self.replica_id, self.pending, self._holders, self._sim = rid, False, holders, sim
        self.replica, self.store, self.store_failure = self, self, None
        self.settings = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g",
                                 replica_id=rid)
        self.outbox_ready = self

    def asked_of_others(self) -> tuple[dict[str, tuple[int, int]], dict[str, set[str]]]:
        heard, self.pending = self.pending, False
        return ({"s": (5, 7)}, {"s": {"p"}}) if heard else ({}, {})

    def holders(self, channel: str, through: int) -> list[str]:
        return self._holders

    def relay(self, spans: object, limit: int) -> int:
        self._sim.relayed(self.replica_id)
        return 3

    def set(self) -> None:  # (outbox_ready)
        pass


class _Simulation:
    """An asker, a sender (alive: it answers on its next tick; or gone) and three holders,
    each ticking every ``heartbeat_s``, jittered as the transport jitters them, for 120 s;
    how many relays the holders made."""

    def __init__(self, seed: int, alive: bool, heartbeat_s: float = 2.0,
                 patience_s: float = 10.0, latency_s: float = 0.05) -> None:
        import heapq
        import random

        from crdt_ops.transport.waiting import jittered

        rng = random.Random(seed)
        self.relays = 0
        self.got: float | None = None  # when the asker has them
        self.now, self.latency_s = 0.0, latency_s
        ids = ["h0", "h1", "h2"]
        durables = {i: _Request(self, i, ids) for i in ids}
        relayers = {i: Relayer(durables[i], patience_s, heartbeat_s)  # type: ignore[arg-type]
                    for i in ids}
        ticks = []
        for who in ["asker", "sender", *ids]:
            t = rng.random() * heartbeat_s
            while t < 120:
                ticks.append((t, who))
                t += jittered(heartbeat_s, rng.random)
        heapq.heapify(ticks)
        asked = False
        while ticks:
            self.now, who = heapq.heappop(ticks)
            if who == "asker" and (self.got is None or self.now < self.got):
                asked = True
                for d in durables.values():
                    d.pending = True
            elif who == "sender" and alive and asked and self.got is None:
                self.got = self.now + latency_s
            elif who in relayers:
                relayers[who].tick(self.now)

    def relayed(self, rid: str) -> None:
        self.relays += 1
        if self.got is None:
            self.got = self.now + self.latency_s


@pytest.mark.parametrize("heartbeat_s, patience_s", [(2.0, 10.0), (0.5, 2.0)])
def test_with_jittered_heartbeats_one_holder_relays_once_and_none_while_the_sender_answers(
        heartbeat_s: float, patience_s: float) -> None:
    for seed in range(300):
        alive = _Simulation(seed, True, heartbeat_s, patience_s)
        gone = _Simulation(seed, False, heartbeat_s, patience_s)
        assert (alive.relays, gone.relays) == (0, 1), seed
