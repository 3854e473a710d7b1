"""Sub-groups: a replica holds some sub-groups of its group, and converges on those."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.errors import InvalidMessage, SubgroupNotHeld
from crdt_ops.ops import Batch, Kind, ObjType, Op
from crdt_ops.subgroups import COMMON, NONE, SubGroups, channel, split
from crdt_ops.wire import codec
from tests.support import exchange, send

RULE = SubGroups(keys=("nodes/{}", "placed/*/{}"), holders=("worker.{}",))
FULL = ("logic", "web")
WORKERS = ("worker.n1", "worker.n2")
IDS = FULL + WORKERS


def group(**options: Any) -> dict[str, Replica]:
    """The four replicas of a managed group with sub-groups n1 and n2 (each worker holds
    its own), after a first exchange of heartbeats."""
    out = {i: Replica(i, members=IDS, subgroups=RULE, **options) for i in IDS}
    for r in out.values():
        r.heartbeat()
    exchange(*out.values())
    return out


def test_the_rule_names_each_key_s_sub_group_and_each_replica_s() -> None:
    assert [RULE.of_key(k) for k in ("nodes/n1", "nodes/n1/x", "placed/main/n2/c7",
                                     "placed/main", "containers/c1", "nodes/a#b")] == \
        ["n1", "n1", "n2", COMMON, COMMON, COMMON]
    assert [RULE.held_by(r) for r in ("worker.n1", "worker.n1.host-3", "logic", "worker",
                                      "workers.n1")] == ["n1", "n1", None, None, None]
    assert RULE.holds("worker.n1", COMMON) and not RULE.holds("worker.n1", "n2")
    assert channel("logic", COMMON) == "logic" and split(channel("logic", "n1")) == \
        ("logic", "n1")
    assert not NONE and RULE and SubGroups(RULE.keys, RULE.holders) == RULE
    for bad in ("nodes", "nodes/{}/{}", "no#des/{}", "nodes/x{}", "nodes//{}", "nod*/{}"):
        with pytest.raises(ValueError):
            SubGroups(keys=(bad,))
    for bad in ("worker", "worker.{}.{}", "w/{}", "{} x"):
        with pytest.raises(ValueError):
            SubGroups(keys=("n/{}",), holders=(bad,))
    with pytest.raises(ValueError):
        Replica("a#b", subgroups=RULE)
    Replica("a#b")  # (no sub-groups: any id)


def test_a_replica_writes_only_what_it_holds_and_skips_the_rest() -> None:
    g = group()
    w1 = g["worker.n1"]
    w1.map("nodes/n1").register("beat").set(1)
    w1.register("common").set("w1")
    before = w1.state()
    with pytest.raises(SubgroupNotHeld, match="holds sub-group 'n1', not 'n2'"):
        w1.map("nodes/n2").register("beat").set(1)
    assert w1.state() == before and w1.unsent == 2
    g["logic"].map("placed/main/n2/c1").register("on").set(True)
    g["logic"].map("placed/main/n1/c2").register("on").set(True)
    exchange(*g.values())
    assert "placed/main/n2/c1" not in w1.state() and w1.stats["skipped"] == 1
    assert w1.get("placed/main/n1/c2") == {"on": True}
    assert g["worker.n2"].get("nodes/n1") is None and g["worker.n2"].get("common") == "w1"
    for r in g.values():
        assert not r.missing() and not r.buffered


def test_a_block_across_sub_groups_is_one_batch_each_the_common_part_first() -> None:
    g = group()
    logic = g["logic"]
    logic.map("placed/main/n1/c1").register("on").set(True)
    logic.register("common").set(1)
    logic.map("placed/main/n2/c1").register("on").set(True)
    batches = [codec.decode(m) for m in logic.outgoing()]
    assert [(b.subgroup, b.first_seq, len(b.ops)) for b in batches
            if isinstance(b, Batch)] == [(COMMON, 1, 1), ("n1", 1, 1), ("n2", 1, 1)]
    n1 = next(b for b in batches if isinstance(b, Batch) and b.subgroup == "n1")
    assert n1.deps.get("logic") == 1  # after the common part's batch
    assert all(split(c)[1] in (COMMON, "n1") for c in n1.deps)


def test_a_batch_must_hold_its_sub_group_s_keys_only() -> None:
    g = group()
    web = g["web"]
    bad = Batch("logic", 1, {}, [Op(("common",), ObjType.LWW_REGISTER, Kind.REGISTER_SET,
                                     value=1, timestamp=1)], "n1")
    with pytest.raises(InvalidMessage) as e:
        web.receive(codec.encode_batch(bad))
    assert e.value.reason == "wrong-subgroup"
    with pytest.raises(InvalidMessage, match="without sub-groups"):
        Replica("x").receive(codec.encode_batch(
            Batch("logic", 1, {}, [Op(("nodes/n1",), ObjType.LWW_REGISTER,
                                      Kind.REGISTER_SET, value=1, timestamp=1)], "n1")))
    with pytest.raises(InvalidMessage) as e:
        codec.decode(codec.encode_batch(Batch("lo#gic", 1, {}, bad.ops, "n1")))
    assert e.value.reason == "bad-subgroup"
    forged = Replica("a#n1")  # no sub-groups: its id may hold '#'
    forged.register("x").set(1)
    with pytest.raises(InvalidMessage) as e:
        web.receive(forged.outgoing()[0])
    assert e.value.reason == "bad-origin"


def test_stability_of_a_sub_group_waits_for_its_holders_only() -> None:
    g = group()
    logic, web, w1, w2 = (g[i] for i in IDS)
    logic.map("nodes/n1").register("x").set(1)  # n1's: w2 never receives it
    logic.register("c").set(1)  # the common part's: every replica receives it
    msgs = logic.outgoing()
    for r in (web, w1):
        for m in msgs:
            r.receive(m)
    for m in msgs[:1]:  # (the common part's batch comes first)
        w2.receive(m)
    for r in g.values():
        r.heartbeat()
    exchange(*g.values())
    stable = logic.stable_clock()
    assert stable.get(channel("logic", "n1")) == 1 and stable.get("logic") == 1
    # w1 stops hearing: n1's next operation waits for it, n2's does not
    logic.map("nodes/n1").register("x").set(2)
    logic.map("nodes/n2").register("x").set(2)
    for m in logic.outgoing():
        for r in (logic, web, w2):
            r.receive(m)
    for r in (logic, web, w2):
        r.heartbeat()
    exchange(logic, web, w2)
    stable = logic.stable_clock()
    assert stable.get(channel("logic", "n2")) == 1 and stable.get(channel("logic", "n1")) == 1


def test_a_worker_s_retirement_counts_where_its_sub_group_is_held() -> None:
    g = group()
    w1 = g["worker.n1"]
    w1.map("nodes/n1").register("x").set(1)
    w1.map("nodes/n1").register("x").set(2)
    beats = w1.outgoing()
    w1.heartbeat(retired=True)
    retirement = w1.outgoing()
    logic, w2 = g["logic"], g["worker.n2"]
    for m in retirement:  # before the worker's operations: they are still counted
        logic.receive(m)
        w2.receive(m)
    assert "worker.n1" in logic.membership.retiring_replicas()
    assert "worker.n1" in w2.membership.retiring_replicas()  # (until logic and web told)
    for m in beats:
        logic.receive(m)
    assert logic.retirements().get(channel("worker.n1", "n1")) == 2
    # logic counts it out once web, which holds every sub-group as logic does, told of it
    # (w2's relays name none of n1's channels: not waited for)
    assert "worker.n1" in logic.membership.retiring_replicas()
    web = g["web"]
    for m in (*beats, *retirement):
        web.receive(m)
    web.heartbeat()
    logic.heartbeat()
    for m in (*web.outgoing(), *logic.outgoing()):
        logic.receive(m)
        w2.receive(m)
    assert "worker.n1" in logic.membership.retired
    # at w2, none of its channels but the common part's (nothing there) is held: logic's
    # and web's word was all it waited for
    assert "worker.n1" in w2.membership.retired


def test_a_worker_holds_its_sub_group_alone_until_another_member_holds_it_too() -> None:
    g = group()
    assert g["worker.n1"].sole_holder() and g["worker.n2"].sole_holder()
    assert not g["logic"].sole_holder()  # it holds every sub-group
    # a second replica of n1's principal, admitted: n1 is held twice now
    g["logic"].admit("worker.n1.b")
    exchange(*g.values())
    assert "worker.n1.b" in g["worker.n1"].membership.members()
    assert not g["worker.n1"].sole_holder() and g["worker.n2"].sole_holder()
    # an open group (no managed membership): its members are not known
    assert not Replica("worker.n1", subgroups=RULE).sole_holder()


def test_a_snapshot_keeps_the_unsent_operations_of_every_sub_group() -> None:
    g = group()
    logic = g["logic"]
    logic.map("nodes/n1").register("x").set(1)
    logic.register("c").set(1)
    logic.map("nodes/n2").register("x").set(1)
    again = Replica.from_snapshot(logic.snapshot(), members=IDS, subgroups=RULE)
    assert again.unsent == 3 and again.state() == logic.state()
    assert [codec.decode(m) for m in again.outgoing()] == \
        [codec.decode(m) for m in logic.outgoing()]


def test_coalescing_never_joins_two_sub_groups() -> None:
    g = group()
    logic = g["logic"]
    logic.outgoing()
    logic.map("nodes/n1").register("x").set(1)
    first = logic.outgoing()
    logic.map("nodes/n2").register("x").set(1)
    second = logic.outgoing()
    assert [n for n, _ in codec.coalesce(first + second)] == [1, 1]


# ------------------------------------------------------------------ convergence

KEYS = ["common", "nodes/n1", "nodes/n2", "placed/a/n1/c", "placed/a/n2/c"]
write = st.tuples(st.sampled_from(IDS), st.sampled_from(KEYS), st.integers(0, 6),
                  st.integers(0, 9))


def _write(r: Replica, key: str, kind: int, v: int) -> None:
    sub = RULE.of_key(key)
    if r.held_subgroup not in (None, sub) and sub != COMMON:
        return  # not this replica's to write
    if kind == 0:
        r.map(key).register("r").set(v)
    elif kind == 1:
        r.map(key).set("s").add(v)
    elif kind == 2:
        r.map(key).set("s").remove(v)
    elif kind == 3:
        r.map(key).counter("n").increment(v)
    elif kind == 4:
        r.remove(key)
    elif kind == 5:
        r.map(key).mvregister("mv").set(v)
    else:
        r.heartbeat()


@settings(max_examples=300, deadline=None)
@given(st.lists(write, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_every_replica_converges_on_what_it_holds_in_any_delivery_order(
        writes: list[tuple[str, str, int, int]], rng: random.Random) -> None:
    g = group(compact_every=1)  # settle what is stable at every chance
    pending: list[tuple[str, bytes]] = []  # (to whom, what)
    for who, key, kind, v in writes:
        _write(g[who], key, kind, v)
        for m in g[who].outgoing():
            pending += [(to, m) for to in IDS]
        rng.shuffle(pending)
        for _ in range(rng.randrange(len(pending) + 1)):  # some arrive, some twice
            to, m = pending.pop()
            g[to].receive(m)
            if rng.random() < 0.1:
                g[to].receive(m)
            if rng.random() < 0.2:  # a report from the receiver, to someone
                g[to].heartbeat()
                pending += [(x, hb) for hb in g[to].outgoing() for x in IDS]
    for to, m in pending:
        g[to].receive(m)
    for _ in range(2):  # reports, then what stability released settled everywhere
        for r in g.values():
            r.heartbeat()
        exchange(*g.values())
        for r in g.values():
            r.compact()
    full, clock = g["logic"].state(), dict(g["logic"].clock)
    assert g["web"].state() == full
    for w in WORKERS:
        assert g[w].state() == RULE.held_state(full, w), w
        assert dict(g[w].clock) == RULE.held_clock(clock, w), w
    for r in g.values():
        assert not r.buffered and not r.missing(), r.replica_id
    # after compaction, more concurrent writes still converge
    for i, who in enumerate(IDS):
        _write(g[who], KEYS[i % 3], 0, 100 + i)
    exchange(*g.values())
    full = g["logic"].state()
    assert g["web"].state() == full
    for w in WORKERS:
        assert g[w].state() == RULE.held_state(full, w), w


def _retiree_s_group() -> tuple[Replica, Replica, Replica, Replica]:
    """Logic, web, node n1's worker and x, the retiree to be, in one managed group with a
    sub-group per node, compacting at every chance; logic's writes win by their time."""
    rule = SubGroups(keys=("nodes/{}",), holders=("worker.{}",))
    ids = ["logic", "web", "worker.n1", "x"]
    logic, web, w1, x = (Replica(r, members=ids, subgroups=rule, wall_clock=lambda w=w: w,
                                 compact_every=1)
                         for r, w in (("logic", 200), ("web", 100), ("worker.n1", 100),
                                      ("x", 100)))
    return logic, web, w1, x


def test_a_late_common_operation_only_a_worker_delivered_is_waited_for() -> None:
    """The retiree's late write of the common part reached the worker alone: once logic
    and web learn of it from the worker's report, they compact nothing before they have it,
    and all three converge (they diverged)."""
    logic, web, w1, x = _retiree_s_group()
    everyone = (logic, web, w1, x)
    for r in everyone:
        r.heartbeat()
    for m in [m for r in everyone for m in r.outgoing()]:
        for r in everyone:
            r.receive(m)
    x.map("m").register("k").set("x")  # common part
    (x1,) = x.outgoing()
    w1.receive(x1)  # only w1's queue had it: the stream lost it
    logic.map("m").register("k").set("a")  # concurrent, wins by its time
    (l1,) = logic.outgoing()
    for r in (web, w1):
        r.receive(l1)
    for r in (logic, web, w1):
        r.receive(Replica.retirement("x", 0))

    def beat(senders: tuple[Replica, ...], to: tuple[Replica, ...]) -> None:
        for _ in range(3):
            for r in senders:
                r.heartbeat()
            for m in [m for r in senders for m in r.outgoing()]:
                for r in to:
                    r.receive(m)
            for r in (logic, web):
                r.compact()
    beat((logic, web), (logic, web))  # w1 silent meanwhile
    w1.heartbeat()  # w1 is back: its report names x 1
    for m in w1.outgoing():
        logic.receive(m)
        web.receive(m)
    beat((logic, web), (logic, web, w1))
    logic.receive(x1)  # read again, or relayed by w1
    web.receive(x1)
    beat((logic, web, w1), (logic, web, w1))
    assert logic.state() == web.state() == w1.state() == {"m": {"k": "a"}}


@pytest.mark.parametrize("key", ["m", "nodes/n1"])
def test_a_retiree_is_counted_out_on_the_word_of_every_member_holding_its_channels(
        key: str) -> None:
    """A worker holds the common part and its node's sub-group. Logic and web counted a
    retiree out on each other's word alone: a late write of the retiree that only the
    worker's queue had (the stream lost it) came after the worker's report of a concurrent
    write, and before the retirement (a queue is first in, first out). Logic and web
    settled that concurrent write, then resolved the late one against it, and diverged from
    the worker (the fifth review's R3). Now every member holding a channel of the retiree
    tells before it is counted out, and with its word comes its report of what it delivered
    (of a channel the retirement did not name too: ``nodes/n1``), which compaction waits
    for."""
    logic, web, w1, x = _retiree_s_group()
    exchange(logic, web, w1, x)
    x.map(key).register("k").set("x")  # loses to logic's, by its time
    (late,) = x.outgoing()
    logic.map(key).register("k").set("a")
    send(logic, web, w1)
    w1.heartbeat()  # its report of logic's write: stable, once the others have it
    send(w1, logic, web)
    w1.receive(late)  # the worker's queue had it; the stream lost it
    for r in (logic, web, w1):
        r.receive(Replica.retirement("x", 0))  # the last the stream held

    def beats(senders: tuple[Replica, ...]) -> None:
        for _ in range(3):
            for r in senders:
                r.heartbeat()
            for r in senders:
                send(r, logic, web, w1)
            for r in (logic, web, w1):
                r.compact()

    beats((logic, web))  # the worker says nothing meanwhile
    assert "x" in logic.membership.retiring_replicas()  # its word is waited for
    beats((logic, web, w1))
    for r in (logic, web):  # read again from the worker's log (the resend)
        r.receive(late)
    beats((logic, web, w1))
    assert logic.state() == web.state() == w1.state() == {key: {"k": "a"}}
    assert all("x" in r.membership.retired for r in (logic, web, w1))


def test_the_only_member_holding_every_sub_group_learns_a_retirement_from_the_workers(
        ) -> None:
    """The retirement missed logic, the only member holding every sub-group (its queue was
    deleted and declared again meanwhile, say). Only a member holding what logic holds
    relayed retirements to it: none did, and the retiree was never counted out there, nor
    anywhere (each waits for logic's word), and stability stalled until the retirement was
    published again (the fifth review's R6). A member's relay now counts for the channels
    it holds: the workers' tell logic of the retirement of what they hold."""
    ids = ["logic", "worker.n1", "worker.n2", "x"]
    logic, w1, w2, x = (Replica(r, members=ids, subgroups=RULE) for r in ids)
    exchange(logic, w1, w2, x)
    x.map("nodes/n1").register("k").set(1)
    x.map("m").register("k").set(1)
    exchange(logic, w1, w2, x)
    retirement = Replica.retirement("x", 0)
    for r in (w1, w2):  # not logic
        r.receive(retirement)
    for _ in range(3):
        for r in (logic, w1, w2):
            r.heartbeat()
        exchange(logic, w1, w2)
    assert all("x" in r.membership.retired for r in (logic, w1, w2))
