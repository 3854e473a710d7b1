"""Random histories on 2-5 replicas over a faulty network always converge."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryNetwork

OPS = st.tuples(st.integers(0, 4), st.integers(0, 13), st.integers(0, 3), st.integers(-3, 3))
EVENTS = st.one_of(
    st.tuples(st.just("op"), OPS),
    st.tuples(st.just("op"), OPS),
    st.tuples(st.just("op"), OPS),
    st.tuples(st.just("step"), st.integers(1, 4)),
    st.tuples(st.just("partition"), st.integers(1, 4)),
    st.tuples(st.just("heal"), st.none()),
)


def do(r: Replica, code: int, a: int, b: int, ledger: dict[str, int]) -> None:
    """One random operation; ``ledger`` counts what the never-removed counter must sum to."""
    if code == 0:
        if b >= 0:
            r.counter("c").increment(b)
        else:
            r.counter("c").decrement(-b)
        ledger["c"] += b
    elif code == 1:
        r.gcounter("g").increment(a)
        ledger["g"] += a
    elif code == 2:
        r.register("r").set(f"{r.replica_id}:{a}")
    elif code == 3:
        r.mvregister("v").set(a)
    elif code == 4:
        r.set("s").add(a)
    elif code == 5:
        r.set("s").remove(a)
    elif code == 6:
        r.flag("f").enable()
    elif code == 7:
        r.flag("f").disable()
    elif code == 8:
        r.map(f"m{a % 2}").register(f"f{b % 3}").set(b)
    elif code == 9:
        r.map(f"m{a % 2}").counter("n").increment(a + 1)
    elif code == 10:
        r.map(f"m{a % 2}").set("tags").add(b)
    elif code == 11:
        r.map(f"m{a % 2}").remove(["n", "tags", "f0", "inner"][a])
    elif code == 12:
        r.map(f"m{a % 2}").map("inner").flag(f"x{b % 2}").enable()
    else:
        r.remove(f"m{a % 2}")


def run(n: int, seed: int, events: list[tuple[str, Any]], dup: float) -> MemoryNetwork:
    net = MemoryNetwork(seed=seed, delay=(0, 3), duplicate=dup, reorder=0.1)
    replicas = [net.add(Replica(f"r{i}", max_batch_ops=3)) for i in range(n)]
    ledger = {"c": 0, "g": 0}
    for kind, arg in events:
        if kind == "op":
            idx, code, a, b = arg
            do(replicas[idx % n], code, a, b, ledger)
        elif kind == "step":
            for _ in range(arg):
                net.step()
        elif kind == "partition":
            ids = list(net.replicas)
            net.partition(ids[: arg % n], ids[arg % n:])
        else:
            net.heal()
    net.heal()
    net.settle()
    state = replicas[0].state()
    assert state.get("c", 0) == ledger["c"]
    assert state.get("g", 0) == ledger["g"]
    return net


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 5), seed=st.integers(0, 2**16), dup=st.sampled_from([0.0, 0.3]),
       events=st.lists(EVENTS, min_size=10, max_size=120))
def test_random_histories_converge(n: int, seed: int, dup: float,
                                   events: list[tuple[str, Any]]) -> None:
    net = run(n, seed, events, dup)
    assert net.converged()
    assert all(r.buffered == 0 for r in net.replicas.values())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), cut=st.floats(0, 1),
       events=st.lists(st.tuples(st.just("op"), OPS), min_size=1, max_size=60))
def test_snapshot_then_rest_of_stream_equals_full_delivery(
        seed: int, cut: float, events: list[tuple[str, Any]]) -> None:
    net = MemoryNetwork(seed=seed, delay=(0, 3), reorder=0.2)
    replicas = [net.add(Replica(f"r{i}", max_batch_ops=4)) for i in range(3)]
    log: list[bytes] = []
    ledger = {"c": 0, "g": 0}
    for _, (idx, code, a, b) in events:
        do(replicas[idx % 3], code, a, b, ledger)
        if idx % 2:
            for r in replicas:
                msgs = r.outgoing()
                log.extend(msgs)
                for m in msgs:
                    net.broadcast(r.replica_id, m)
            net.step()
    for r in replicas:
        log.extend(r.outgoing())
    full = Replica("late")
    for m in log:
        full.receive(m)
    k = int(cut * len(log))
    partial = Replica("late")
    for m in log[:k]:
        partial.receive(m)
    restored = Replica.from_snapshot(partial.snapshot())
    for m in log:  # the whole stream again: the prefix must not double-apply
        restored.receive(m)
    assert restored.state() == full.state()
    assert dict(restored.clock) == dict(full.clock)
    assert full.state().get("c", 0) == ledger["c"]


def test_many_seeded_random_histories_converge() -> None:
    """A seeded sweep beside hypothesis: long, op-dense histories with faults."""
    import random

    for seed in range(120):
        rng = random.Random(seed)
        events: list[tuple[str, Any]] = []
        for _ in range(100):
            x = rng.random()
            if x < 0.75:
                events.append(("op", (rng.randrange(5), rng.randrange(14), rng.randrange(4),
                                      rng.randrange(-3, 4))))
            elif x < 0.95:
                events.append(("step", rng.randint(1, 4)))
            elif x < 0.98:
                events.append(("partition", rng.randint(1, 4)))
            else:
                events.append(("heal", None))
        net = run(rng.randint(2, 5), seed, events, rng.choice([0.0, 0.3]))
        assert net.converged(), f"seed {seed} diverged"
