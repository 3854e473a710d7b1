"""Each type against its specification, on random concurrent histories.

The specification is written from causality alone (what each replica had
delivered when it issued an operation), independently of how the types work:
- OR-set: e is in the set iff some add(e) is not causally before any remove(e);
- EW-flag: on iff some enable is not causally before any disable;
- MV-register: the values of the writes no other write causally follows;
- LWW-register: the value of the greatest (timestamp, replica id) write, and a
  write always wins over the writes it causally follows;
- counters: the sum of every increment minus every decrement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_ops import Replica
from crdt_ops.transport.memory import MemoryNetwork


@dataclass
class Issued:
    origin: str
    seq: int
    before: dict[str, int]  # the origin's clock just before it issued the operation
    kind: str
    arg: Any
    ts: int = 0


def precedes(a: Issued, b: Issued) -> bool:
    return b.before.get(a.origin, 0) >= a.seq


OPS = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(
    ["add", "remove", "enable", "disable", "mv", "lww", "inc", "dec", "step", "step"]),
    st.integers(0, 3)), min_size=10, max_size=80)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 4), script=OPS)
def test_every_type_matches_its_specification(seed: int, n: int,
                                              script: list[tuple[int, str, int]]) -> None:
    net = MemoryNetwork(seed=seed, delay=(0, 6), reorder=0.3, duplicate=0.2)
    wall = [0]
    replicas = [net.add(Replica(f"r{i}", wall_clock=lambda: wall[0])) for i in range(n)]
    log: list[Issued] = []
    for who, kind, arg in script:
        wall[0] = (wall[0] + 7 * arg) % 20  # wall clocks that jump back and forth
        if kind == "step":
            for _ in range(arg + 1):
                net.step()
            continue
        r = replicas[who % n]
        before = dict(r.clock)
        size = r.metadata_size()
        if kind in ("add", "remove"):
            arg %= 2  # few elements: adds and removes of one element meet often
        if kind == "add":
            r.set("s").add(arg)
        elif kind == "remove":
            r.set("s").remove(arg)
        elif kind == "enable":
            r.flag("f").enable()
        elif kind == "disable":
            r.flag("f").disable()
        elif kind == "mv":
            r.mvregister("mv").set(f"{r.replica_id}:{arg}")
        elif kind == "lww":
            r.register("lww").set(f"{r.replica_id}:{arg}")
        elif kind == "inc":
            r.counter("c").increment(arg)
        else:
            r.counter("c").decrement(arg)
        seq = r.clock.get(r.replica_id, 0)
        if seq == before.get(r.replica_id, 0):
            assert r.metadata_size() == size  # a no-op (remove of an absent element) issued nothing
            continue
        ts = r.register("lww").timestamp if kind == "lww" else 0
        log.append(Issued(r.replica_id, seq, before, kind, arg, ts))
    net.settle()
    assert net.converged()
    state = replicas[0].state()

    adds = [o for o in log if o.kind == "add"]
    removes = [o for o in log if o.kind == "remove"]
    members = {a.arg for a in adds
               if not any(r.arg == a.arg and precedes(a, r) for r in removes)}
    assert state.get("s", frozenset()) == members

    enables = [o for o in log if o.kind == "enable"]
    disables = [o for o in log if o.kind == "disable"]
    assert state.get("f", False) == any(not any(precedes(e, d) for d in disables)
                                        for e in enables)

    mvs = [o for o in log if o.kind == "mv"]
    expect_mv = {f"{w.origin}:{w.arg}" for w in mvs if not any(precedes(w, x) for x in mvs)}
    assert state.get("mv", frozenset()) == expect_mv

    lwws = [o for o in log if o.kind == "lww"]
    for w in lwws:
        for x in lwws:
            if precedes(w, x):
                assert (x.ts, x.origin) > (w.ts, w.origin)  # the hybrid clock's promise
    if lwws:
        top = max(lwws, key=lambda w: (w.ts, w.origin))
        assert state["lww"] == f"{top.origin}:{top.arg}"

    total = sum(o.arg if o.kind == "inc" else -o.arg for o in log if o.kind in ("inc", "dec"))
    assert state.get("c", 0) == total
