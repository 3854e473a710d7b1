"""Causal stability: metadata stays flat under churn, and is kept while needed."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from crdt_ops import Replica
from crdt_ops.errors import TypeConflict
from crdt_ops.transport.memory import MemoryNetwork
from crdt_ops.wire import decode
from tests.support import exchange, send


def churn(replicas: list[Replica], rng: random.Random) -> None:
    r = rng.choice(replicas)
    x = rng.randrange(8)
    e = rng.randrange(20)
    if x == 0:
        r.set("s").add(e)
    elif x == 1:
        r.set("s").remove(e)
    elif x == 2:
        r.map("m").register(f"f{e % 5}").set(e)
    elif x == 3:
        r.map("m").remove(f"f{e % 5}")
    elif x == 4:
        r.register("r").set(e)
    elif x == 5:
        r.flag("on").enable() if e % 2 else r.flag("on").disable()
    elif x == 6:
        r.mvregister("mv").set(e)
    else:
        r.map(f"c{e % 3}").counter("n").increment()
        if e % 4 == 0:
            r.remove(f"c{e % 3}")


def test_metadata_and_memory_stay_flat_under_long_churn() -> None:
    rng = random.Random(7)
    net = MemoryNetwork(seed=7, delay=(0, 2), reorder=0.1)
    founders = [f"r{i}" for i in range(3)]
    replicas = [net.add(Replica(r, compact_every=200, members=founders)) for r in founders]
    sizes: dict[int, list[int]] = {}
    tracemalloc.start()
    try:
        mem: dict[int, int] = {}
        for step in range(1, 9001):
            churn(replicas, rng)
            net.step()
            if step % 50 == 0:
                for r in replicas:
                    r.heartbeat()
            if step in (3000, 9000):
                net.settle()
                for r in replicas:
                    r.heartbeat()
                net.settle()
                for r in replicas:
                    r.compact()
                sizes[step] = [r.metadata_size() for r in replicas]
                mem[step] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert net.converged()
    # 3x the operations, no more metadata than a small constant over the first third.
    for early, late in zip(sizes[3000], sizes[9000], strict=True):
        assert late <= early + 40, (sizes, mem)
    assert mem[9000] - mem[3000] < 256 * 1024, mem


def test_lww_concurrent_values_kept_while_a_replica_lags_then_compacted() -> None:
    net = MemoryNetwork(seed=1)
    a, b, c = (net.add(Replica(x, members=list("abc"))) for x in "abc")
    for r in (a, b, c):
        r.heartbeat()
    net.settle()
    net.partition(["a", "b"], ["c"])
    a.register("r").set("a")
    b.register("r").set("b")
    c.register("r").set("c")
    net.settle()
    for r in (a, b):
        r.heartbeat()
    net.settle()
    for r in (a, b):
        r.compact()
        r.compact()
    # c has not reported: the concurrent write it may still send needs both values.
    assert a.metadata_size() == b.metadata_size()
    entries_before = _register_entries(a)
    assert entries_before == 2
    net.heal()
    net.settle()
    for _ in range(3):
        for r in (a, b, c):
            r.heartbeat()
        net.settle()
        for r in (a, b, c):
            r.compact()
    assert net.converged()
    assert a.register("r").value == "c"
    assert [_register_entries(r) for r in (a, b, c)] == [1, 1, 1]


def _register_entries(r: Replica) -> int:
    obj = r._root.locate(("r",), r.register("r").TYPE)
    assert obj is not None
    return obj.size()


def test_a_member_never_heard_from_holds_stability_until_retired() -> None:
    a, b = Replica("a", members=list("ab")), Replica("b", members=list("ab"))
    b.counter("n").increment()
    exchange(a, b)
    a.counter("n").increment()
    exchange(a, b)
    b.heartbeat()
    exchange(a, b)
    assert a.stable_clock() == {"a": 1, "b": 1}
    # b admits a third replica "ghost", which then never reports
    ghost = Replica("ghost", members=list("ab"))
    ghost.join()
    send(ghost, b)
    exchange(a, b)
    # ghost never reported: it holds everything back (which admission its operations
    # follow, if any, is known only once it reports)
    assert a.stable_clock() == {}
    a.counter("n").increment()
    exchange(a, b)
    b.heartbeat()
    exchange(a, b)
    assert a.stable_clock() == {}
    a.retire("ghost")
    a.heartbeat()  # relays the retirement to b
    exchange(a, b)
    b.heartbeat()  # b tells it knows of it: a counts ghost out
    exchange(a, b)
    assert a.stable_clock()["a"] == 2


def test_a_newcomer_admitted_twice_counts_only_what_it_reported() -> None:
    """Every member that hears a join request admits the sender. b took the newcomer n as
    having delivered the causal past of the admission b delivered first (its own, after
    its two writes), while n had delivered a's only: b settled ``r`` at X, then n's
    concurrent write Y, which loses to X everywhere else, landed on the settled field at
    b alone, and b showed Y for good."""
    a, b, n = (Replica(r, members=["a", "b"]) for r in "abn")

    def deliver(msgs: list[bytes], *to: Replica) -> None:
        for m in msgs:
            for r in to:
                r.receive(m)

    n.join()
    join = n.outgoing()
    deliver(join, a)
    by_a = a.outgoing()  # a 1 admits n
    b.register("r").set("X0")
    b.register("r").set("X")
    by_b = b.outgoing()
    deliver(join, b)
    by_b += b.outgoing()  # b 3 admits n, after b 1..2
    deliver(by_a, n)  # n is a member, and has not seen X
    n.register("r").set("Y")
    by_n = n.outgoing()
    deliver(by_b, a)
    deliver(by_a, b)
    a.heartbeat()
    deliver(a.outgoing(), b)
    b.compact()
    b.compact()
    assert "b" not in b.stable_clock()  # n reported nothing: b 1..2 are not stable
    deliver(by_n, a, b)
    deliver(by_b, n)
    assert a.state() == b.state() == n.state() == {"r": "X"}
    assert a.clock == b.clock == n.clock


def _stable(net: MemoryNetwork, replicas: list[Replica], compact: list[Replica]) -> None:
    """Deliver everything, let every replica hear every clock, compact ``compact``."""
    for _ in range(2):
        net.settle()
        for r in replicas:
            r.heartbeat()
        net.settle()
    for r in compact:
        r.compact()


def _record(r: Replica, cid: str) -> None:
    m = r.map("containers/" + cid)
    m.register("name").set(f"n-{cid}")
    m.register("power").set("off")
    m.map("workers").map("n1").register("pid").set(7)


def test_a_stable_record_settles_into_a_frozen_map_and_stays_the_same() -> None:
    """Once its updates are causally stable a record is held as one frozen tuple
    (crdt_ops/types/settled.py): no dots, no presence. Its value, reads through
    handles, a snapshot and the type of each name are unchanged; a later write
    brings back only what it touches."""
    net = MemoryNetwork(seed=3)
    a, b, c = (net.add(Replica(x, members=list("abc"))) for x in "abc")
    _record(a, "1")
    b.map("containers/1").counter("restarts").increment(2)
    net.settle()
    before = a.state()
    _stable(net, [a, b, c], [a, b, c])
    assert a.state() == before == c.state()
    entry = a._root.settled["containers/1"]
    assert type(entry) is tuple  # frozen, down to workers/n1
    assert a.metadata_size() == 1
    assert a.map("containers/1").register("name").value == "n-1"
    assert a.map("containers/1").map("workers").map("n1").register("pid").value == 7
    with pytest.raises(TypeConflict):
        a.map("containers/1").counter("name")
    restored = Replica.from_snapshot(a.snapshot(), members=list("abc"))
    assert restored.state() == before
    assert type(restored._root.settled["containers/1"]) is tuple
    with pytest.raises(TypeConflict):
        restored.map("containers/1").map("power")

    c.map("containers/1").register("power").set("on")
    c.map("containers/1").counter("restarts").increment()
    net.settle()
    for r in (a, b, c):
        assert r.get("containers/1") == {"name": "n-1", "power": "on", "restarts": 3,
                                         "workers": {"n1": {"pid": 7}}}
    _stable(net, [a, b, c], [a, b, c])
    assert all(type(r._root.settled["containers/1"]) is tuple for r in (a, b, c))


def test_removes_and_assignments_reach_replicas_that_have_not_settled() -> None:
    """A replica that settled a field prepares operations without its dots: a remove
    (it observes the whole clock) and an assignment (newer than the settled one) act
    the same at a replica that still holds the dots; a concurrent update survives the
    remove everywhere."""
    net = MemoryNetwork(seed=4)
    a, b, c = (net.add(Replica(x, members=list("abc"), compact_every=10**9)) for x in "abc")
    _record(b, "1")
    _record(b, "2")
    net.settle()
    net.partition(["a", "b"], ["c"])  # c hears no clock: it cannot settle anything
    for r in (a, b):
        r.receive(c.clock_message())
    _stable(net, [a, b], [a])  # a settles
    assert type(a._root.settled["containers/1"]) is tuple
    assert "containers/1" in c._root.fields
    net.partition(["a"], ["b"], ["c"])
    a.map("containers/1").register("power").set("on")
    a.remove("containers/2")
    c.map("containers/2").register("power").set("crashed")  # concurrent with the remove
    net.heal()
    net.settle()
    assert net.converged()
    for r in (a, b, c):
        assert r.get("containers/1")["power"] == "on"
        assert r.get("containers/2") == {"power": "crashed"}
    _stable(net, [a, b, c], [a, b, c])
    assert net.converged()
    assert [r.metadata_size() for r in (a, b, c)] == [r.metadata_size() for r in (c, a, b)]


def test_a_replica_that_lost_what_it_had_told_the_group_names_it_as_unmet_claims() -> None:
    """Its own messages received back (from the group's history, after its store lost
    them) tell what it had delivered: what it no longer has is an unmet claim, which a
    transport reads back before the replica writes again (else its next operations
    would be concurrent with what its peers took as stable)."""
    a, b = Replica("a"), Replica("b")
    b.counter("n").increment()
    from_b = b.outgoing()
    for m in from_b:
        a.receive(m)
    a.counter("n").increment(10)  # follows b's operation
    a.heartbeat()
    from_a = a.outgoing()
    assert a.unmet_claims() == {}
    for m in from_a:  # its own echoes tell nothing it lacks
        a.receive(m)
    assert a.unmet_claims() == {}
    lost = Replica("a")  # the same replica, its store gone back to before b's operation
    for m in from_a:
        lost.receive(m)
    assert lost.unmet_claims() == {"b": (1, 1), "a": (1, 1)}
    for m in from_b:
        lost.receive(m)
    assert lost.unmet_claims() == {}
    assert lost.own_seq == 1 and lost.counter("n").value == 11


@pytest.mark.parametrize("capped", [True, False])
def test_a_clock_sent_ahead_of_operations_that_never_go_out_holds_no_one_up(
        capped: bool) -> None:
    """A transport publishes probes and markers outside its outbox's order, so a clock
    there may name operations still in the outbox. Were they never sent (their sender
    deposed while cut off), every peer would take them for a gap, and a retirement naming
    the sender's last operation in the stream would wait for them: stability stalled for
    good. Named only up to the first unsent one (``unsent_from``, and not beyond what
    ``outgoing()`` handed out), the clock holds no one up (``capped=False``: without it,
    they wait)."""
    a, b, c = (Replica(r, members=["a", "b", "c"]) for r in "abc")
    a.counter("x").increment()
    exchange(a, b, c)
    a.counter("x").increment()
    a.outgoing()  # seq 2: in a's outbox, never confirmed
    a.counter("x").increment()  # seq 3: not even handed out
    probe = a.clock_message(unsent_from={"a": 2} if capped else None)
    assert decode(a.clock_message(unsent_from={})).clock == {"a": 2}  # (3: not handed out)
    b.receive(probe)
    assert (b.missing() == {}) == capped
    retirement = Replica.retirement("a", 1)  # a deposed: its replacement retires it
    for r in (b, c):
        r.receive(retirement)
    b.counter("y").increment()
    c.counter("z").increment()
    exchange(b, c)
    b.heartbeat()
    c.heartbeat()
    exchange(b, c)
    assert (b.stable_lag() == c.stable_lag() == 0) == capped
    assert ("a" in b.membership.retired) == capped
