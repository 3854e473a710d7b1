"""Causal stability: metadata stays flat under churn, and is kept while needed."""

from __future__ import annotations

import random
import tracemalloc

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryNetwork
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
    a, b, c = (net.add(Replica(x, members="abc")) for x in "abc")
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
    a, b = Replica("a", members="ab"), Replica("b", members="ab")
    b.counter("n").increment()
    exchange(a, b)
    a.counter("n").increment()
    exchange(a, b)
    b.heartbeat()
    exchange(a, b)
    assert a.stable_clock() == {"a": 1, "b": 1}
    # b admits a third replica "ghost", which then never reports
    ghost = Replica("ghost", members="ab")
    ghost.join()
    send(ghost, b)
    exchange(a, b)
    assert a.stable_clock().get("a", 0) == 1  # the admission followed a:1: ghost's ops will too
    a.counter("n").increment()
    exchange(a, b)
    b.heartbeat()
    exchange(a, b)
    assert a.stable_clock().get("a", 0) == 1  # ghost never said it delivered a:2
    a.retire("ghost")
    b.heartbeat()
    exchange(a, b)
    assert a.stable_clock()["a"] == 2
