"""Causal stability under membership change: founders, admissions, retirements."""

from __future__ import annotations

import os

import pytest

from crdt_ops import InvalidMessage, NotAMember, Replica
from crdt_ops.membership import Membership
from crdt_ops.ops import Heartbeat
from crdt_ops.wire import codec
from tests.support import exchange, send
from tools.sim.histories import run as run_histories


def at(wall: int):  # type: ignore[no-untyped-def]
    return lambda: wall


def test_compaction_waits_for_a_member_not_yet_heard_from() -> None:
    """Failing input 1: s must not take q's write as stable before p reported."""
    members = list("pqs")
    p = Replica("p", wall_clock=at(200), members=members)
    q = Replica("q", wall_clock=at(100), members=members)
    s = Replica("s", compact_every=1, members=members)
    p.map("job").register("state").set("from-p")
    p1 = p.outgoing()
    q.map("job").register("state").set("from-q")
    q1 = q.outgoing()
    q.counter("n").increment()
    q2 = q.outgoing()
    for m in (*q1, *q2, *p1):
        s.receive(m)
    for m in p1:
        q.receive(m)
    p.map("job").remove("state")
    p2 = p.outgoing()
    for m in (*q1, *q2):
        p.receive(m)
    for m in p2:
        q.receive(m)
        s.receive(m)
    want = {"job": {"state": "from-q"}, "n": 1}
    assert dict(p.clock) == dict(q.clock) == dict(s.clock) == {"p": 2, "q": 2}
    assert [r.state() for r in (p, q, s)] == [want, want, want]


def test_a_retired_members_last_operations_are_waited_for() -> None:
    """Failing input 2: d's remove reaches a and b after its retirement."""
    members = list("abd")
    a = Replica("a", wall_clock=at(200), members=members)
    b = Replica("b", wall_clock=at(100), members=members)
    d = Replica("d", members=members)
    o = Replica("o", members=members)  # listens only
    for r in (a, b, d):
        r.heartbeat()
    exchange(a, b, d)
    a.map("m").register("r").set("A")
    a_w = a.outgoing()
    b.map("m").register("r").set("B")
    b_w = b.outgoing()
    for m in a_w:
        d.receive(m)
    d.map("m").remove("r")
    d.heartbeat(retired=True)
    d_msgs = d.outgoing()  # the remove, then the retirement
    for m in (*a_w, *b_w, *d_msgs):
        o.receive(m)
    retirement = d_msgs[-1]
    for r in (a, b):
        r.receive(retirement)
    for m in b_w:
        a.receive(m)
    for m in a_w:
        b.receive(m)
    for _ in range(3):
        exchange(a, b)
        for r in (a, b):
            r.heartbeat()
            r.compact()
        exchange(a, b)
    for m in d_msgs:
        a.receive(m)
        b.receive(m)
    want = {"m": {"r": "B"}}
    assert [r.state() for r in (a, b, o)] == [want, want, want]
    # once d's last operation is delivered, it no longer holds stability back
    for _ in range(2):
        for r in (a, b):
            r.heartbeat()
        exchange(a, b)
    assert a.stable_clock().get("d") == 1 and "d" in a.membership.retired
    with pytest.raises(NotAMember):
        d.counter("n").increment()


def test_a_heartbeat_naming_undelivered_operations_is_a_gap() -> None:
    """Failing input 3: a lost last batch shows in missing()."""
    a, b = Replica("a"), Replica("b")
    b.counter("n").increment()
    first = b.outgoing()
    b.counter("n").increment()
    b.outgoing()  # lost
    b.heartbeat()
    for m in (*first, *b.outgoing()):
        a.receive(m)
    assert a.missing() == {"b": (2, 2)}
    assert a.has_gap()
    c = Replica("c")
    c.receive(first[0])
    assert not c.has_gap()


def test_a_newcomer_writes_only_once_admitted() -> None:
    a = Replica("a", members=["a"])
    n = Replica("n", members=["a"])
    with pytest.raises(NotAMember):
        n.counter("x").increment()
    assert n.state() == {} and n.outgoing() == []
    n.join()
    send(n, a)  # a admits n
    assert a.membership.is_member("n") and not n.is_member
    send(a, n)
    assert n.is_member
    n.counter("x").increment()
    exchange(a, n)
    assert a.state() == n.state() == {"x": 1}


def test_an_operation_without_admission_is_refused_everywhere() -> None:
    a = Replica("a", members=["a"])
    rogue = Replica("rogue")  # an open replica: writes without being admitted
    rogue.counter("x").increment()
    (msg,) = rogue.outgoing()
    with pytest.raises(InvalidMessage) as info:
        a.receive(msg)
    assert info.value.reason == "not-a-member"
    assert a.state() == {} and dict(a.clock) == {}


def test_a_group_founded_by_its_first_replica() -> None:
    f = Replica("f", members=[])
    n = Replica("n", members=[])
    assert not f.is_member
    f.found()
    f.counter("x").increment()
    n.join()
    exchange(f, n)
    assert f.is_member and n.is_member
    n.counter("x").increment()
    exchange(f, n)
    assert f.state() == n.state() == {"x": 2}
    with pytest.raises(ValueError):
        f.found()  # only a first operation founds


def test_membership_survives_a_snapshot_and_a_bootstrap() -> None:
    a = Replica("a", members=["a"])
    n = Replica("n", members=["a"])
    n.join()
    exchange(a, n)
    a.heartbeat(retired=False)
    exchange(a, n)
    restored = Replica.from_snapshot(n.snapshot())
    assert restored.is_member and restored.stable_clock() == n.stable_clock()
    newcomer = Replica.from_snapshot(a.snapshot(), replica_id="z")
    assert not newcomer.is_member  # a peer's snapshot does not make it a member
    assert newcomer.membership.members() == {"a", "n"}
    open_one = Replica.from_snapshot(Replica("o").snapshot())
    assert open_one.is_member and not open_one.membership.managed


def test_an_operator_retirement_waits_for_the_named_last_operation() -> None:
    a, g = Replica("a", members=list("ag")), Replica("g", members=list("ag"))
    g.counter("n").increment()
    g.counter("n").increment()
    g_msgs = g.outgoing()
    a.receive(a.retirement("g", 2))  # g is dead; its last operation was g:2
    assert a.missing() == {"g": (1, 2)}
    a.counter("n").increment()
    a.heartbeat()
    a.outgoing()
    assert a.stable_clock() == {}  # g still counts: its operations are not all here
    for m in g_msgs:
        a.receive(m)
    assert "g" in a.membership.retired and a.stable_clock() == {"a": 1, "g": 2}


def test_random_histories_with_joins_and_retirements_converge() -> None:
    """The property (tools/sim/histories.py); ``crdt-ops histories`` runs 10,000."""
    count = int(os.environ.get("CRDT_OPS_HISTORIES", "400"))
    assert run_histories(count, seed=1000) == []


def test_own_batches_logged_after_a_snapshot_replay_onto_it() -> None:
    """A durable replica replays its own batches logged after its snapshot (their deps
    list only what grew since the batch before): an admitted member's batch must not be
    refused as written without an admission (the platform's worker failed so on restart)."""
    f = Replica("f", members=["f"])
    f.found()
    w = Replica("w", members=["f"])
    w.join()
    for m in w.outgoing():
        f.receive(m)
    for m in f.outgoing():
        w.receive(m)
    assert w.is_member
    w.counter("n").increment()
    w.outgoing()
    snapshot = w.snapshot()
    w.counter("n").increment()
    later = w.outgoing()
    restored = Replica.from_snapshot(snapshot, members=["f"])
    for m in later:
        assert restored.receive(m)
    assert restored.state() == w.state() == {"n": 2}
    assert dict(restored.clock) == dict(w.clock)


def test_a_retirement_missed_is_learned_from_any_members_heartbeat() -> None:
    """A retirement is no operation: a member whose queue was unbound when it was
    published sees no gap in any clock. Every member's heartbeat relays the retirements
    it knows of; only a member's relay counts."""
    a, b, d = (Replica(r, members=list("abd")) for r in "abd")
    d.counter("n").increment()
    d.heartbeat(retired=True)
    op, retirement = d.outgoing()
    for r in (a, b):
        r.receive(op)
    a.receive(retirement)  # b missed it
    # a counts d out once every other member told it knows: b has not
    assert "d" in a.membership.retiring_replicas() and not b.membership.retiring
    stranger = codec.encode_heartbeat(Heartbeat("z", {}, retirements={"a": 1}))
    assert b.receive(stranger) is False and not b.membership.retiring
    a.heartbeat()
    (beat,) = a.outgoing()
    assert b.receive(beat) is True  # it told b something: to be logged
    assert "d" in b.membership.retired and b.membership.members() == {"a", "b"}
    assert b.receive(beat) is False  # nothing new the second time
    # a replica that never wrote retires after its operation 0: relayed all the same
    e = Replica("e", members=list("abde"))
    e.heartbeat(retired=True)
    (gone,) = e.outgoing()
    for r in (a, b):
        r.admit("e")  # as if admitted by each (the admission is not what is tested here)
    a.receive(gone)
    assert "e" in a.membership.retiring_replicas() and "e" not in b.membership.retired
    a.heartbeat()
    beat = a.outgoing()[-1]  # after a's admission of e
    assert b.receive(beat) is True and "e" in b.membership.retired  # a told of it too
    b.heartbeat()
    exchange(a, b)  # b told a of d and e: a counts both out
    assert {"d", "e"} <= a.membership.retired


def test_a_retirement_naming_too_low_a_last_waits_for_what_a_member_delivered() -> None:
    """An operator's retirement names the last operation the group's stream holds, and the
    stream may have lost one that queues delivered: x's last write reached b, not a (nor
    the stream). a counted x out at once, compacted a's concurrent write, then applied
    x's late write on the settled field: equal clocks, different states, for good. Now a
    counts x out only once b told it knows of the retirement, and b names the most it
    delivered of x: a waits for that too (its gap, read again or relayed)."""
    members = ["a", "b", "x"]
    a = Replica("a", members=members, wall_clock=at(200), compact_every=1)
    b = Replica("b", members=members, wall_clock=at(100), compact_every=1)
    x = Replica("x", members=members, wall_clock=at(100))
    x.map("m").register("k").set("x")  # x 1, concurrent with a 1
    (x1,) = x.outgoing()
    a.map("m").register("k").set("a")
    (a1,) = a.outgoing()
    for m in (x1, a1):
        b.receive(m)
    x.receive(a1)
    x.heartbeat()
    for m in x.outgoing():  # x's last heartbeat, to b only; then x is gone
        b.receive(m)
    retirement = Replica.retirement("x", 0)  # the stream held no operation of x
    for r in (a, b):
        r.receive(retirement)
    assert "x" in a.membership.retiring_replicas()  # b has not told a yet
    for _ in range(3):
        for r in (a, b):
            r.heartbeat()
        exchange(a, b)
        for r in (a, b):
            r.compact()
    assert a.membership.retiring == {"x": 1} and a.missing() == {"x": (1, 1)}
    assert a.receive(x1)  # late, from b (relayed) or from a's queue
    for r in (a, b):
        r.heartbeat()
    exchange(a, b)
    assert a.state() == b.state() == {"m": {"k": "a"}}
    assert dict(a.clock) == dict(b.clock) and a.membership.retired == {"x"}


def test_operations_of_a_replica_admitted_before_its_retirement_stay_valid() -> None:
    """Where a retirement was delivered before the retiree's admission, the admission was
    not recorded: the retiree's operations, applied at every member that had the
    admission first, were refused here (not-a-member), and whatever followed them waited
    for good."""
    a, b = Replica("a", members=["a", "b"]), Replica("b", members=["a", "b"])
    x = Replica("x", members=["a", "b"])
    x.join()
    send(x, b)  # b admits x
    admission = send(b, x)
    x.counter("n").increment()
    (x1,) = send(x, b)
    b.counter("n").increment()  # follows x 1
    (b2,) = b.outgoing()
    a.receive(Replica.retirement("x", 0))  # an operator: the stream held nothing of x
    a.receive(b.clock_message())  # b reports x 1: a counts x until it has it
    for m in admission:
        a.receive(m)
    assert a.receive(x1) and a.receive(b2)
    assert a.state() == b.state() == {"n": 2} and a.buffered == 0
    m = Membership(["a"])
    m.retire("x", {"x": 0})
    assert m.settle({}) == ["x"]
    assert m.admit("x", ("a", 3)) is False and m.admissions["x"] == {"a": 3}
    assert m.may_write("x", {"a": 3}, founding=False) and not m.is_member("x")


def test_a_retiring_replica_that_hears_a_join_request_admits_nobody() -> None:
    """A replica retiring (its retirement sent, the others not all told yet) writes no
    more: a join request it heard made it admit the newcomer, and the admission raised
    NotAMember out of receive(); over RabbitMQ its delivery failed, again at each
    redelivery."""
    a, b = Replica("a", members=["a", "b"]), Replica("b", members=["a", "b"])
    a.heartbeat(retired=True)  # as AmqpNode.leave() does, then waits
    send(a, b)
    c = Replica("c", members=["a", "b"])
    c.join()
    (request,) = c.outgoing()
    assert a.receive(request) is False and not a.outgoing()  # nothing admitted by a
    assert b.receive(request) is False and b.outgoing()  # b admits c


def _gossip(*replicas: Replica, rounds: int = 3, compact: bool = True) -> None:
    """Heartbeats among ``replicas``, each round delivered to all, then compaction."""
    for _ in range(rounds):
        for r in replicas:
            r.heartbeat()
        exchange(*replicas)
        for r in replicas if compact else ():
            r.compact()


def test_a_late_operation_held_waiting_when_a_member_told_still_counts() -> None:
    """b told it knew of x's retirement while x's late write waited in b's causal buffer:
    b's relay named what it had delivered of x (nothing), a counted x out and compacted,
    and x's write then landed on a's settled field: a and b diverged. A relay names what
    a report named too, and compaction waits for what any report named of a replica
    counted out."""
    members = ["a", "b", "x"]
    a = Replica("a", members=members, wall_clock=at(200), compact_every=1)
    b = Replica("b", members=members, wall_clock=at(100), compact_every=1)
    x = Replica("x", members=members, wall_clock=at(100))
    a.counter("z").increment()
    (a1,) = a.outgoing()
    x.receive(a1)
    x.map("m").register("k").set("x")  # x 1, after a 1
    (x1,) = x.outgoing()
    a.map("m").register("k").set("a")  # a 2, concurrent with x 1, wins by its time
    (a2,) = a.outgoing()
    b.receive(x1)
    assert b.buffered == 1  # waits for a 1
    for r in (a, b):
        r.receive(Replica.retirement("x", 0))  # the stream held nothing of x
    _gossip(a, b, rounds=2, compact=False)
    for m in (a1, a2):
        b.receive(m)  # x 1 applied at b now
    _gossip(a, b)
    assert a.receive(x1)  # late, at a
    _gossip(a, b)
    assert a.state() == b.state() == {"z": 1, "m": {"k": "a"}}
    assert dict(a.clock) == dict(b.clock)


def test_a_member_leaving_tells_what_it_has_of_another_retiree() -> None:
    """Only w had x's late write (its queue had it, the stream lost it); then w left
    (``heartbeat(retired=True)``, as ``AmqpNode.leave`` does). Its leaving heartbeat, whose
    clock names x 1, was read as a retirement only: a and b counted x out at 0 on each
    other's word, compacted, and x 1, relayed by w while it waited to leave, landed on
    settled state. A leaving member's heartbeat is its last report too."""
    ids = ["a", "b", "w", "x"]
    a, b, w, x = (Replica(r, members=ids, wall_clock=at(200 if r == "a" else 100),
                          compact_every=1) for r in ids)
    _gossip(a, b, w, x, rounds=1)
    x.map("m").register("k").set("x")
    (x1,) = x.outgoing()
    a.map("m").register("k").set("a")  # concurrent, wins by its time
    (a1,) = a.outgoing()
    for r in (b, w):
        r.receive(a1)
    w.heartbeat()
    send(w, a, b)
    w.receive(x1)  # only w's queue had it
    for r in (a, b, w):
        r.receive(Replica.retirement("x", 0))  # the stream held nothing of x
    w.heartbeat(retired=True)  # w leaves: its clock names x 1
    send(w, a, b)
    _gossip(a, b)
    assert a.membership.retiring.get("x") == 1 and a.missing() == {"x": (1, 1)}
    assert a.receive(x1) and b.receive(x1)  # relayed by w, as a asked
    _gossip(a, b)
    assert a.state() == b.state() == w.state() == {"m": {"k": "a"}}
