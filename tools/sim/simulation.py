"""Simulations of many replicas over the in-memory network."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from crdt_ops.replica import Replica
from crdt_ops.transport.memory import MemoryNetwork


@dataclass
class SimulationResult:
    replicas: int
    ops: int
    deliveries: int
    ticks: int
    seconds: float
    converged: bool

    @property
    def us_per_op(self) -> float:
        """Wall time per issued operation, all replicas' work included."""
        return self.seconds / self.ops * 1e6

    @property
    def us_per_delivery(self) -> float:
        """Wall time per message received by one replica."""
        return self.seconds / max(self.deliveries, 1) * 1e6

    def line(self) -> str:
        return (f"replicas={self.replicas} ops={self.ops} deliveries={self.deliveries} "
                f"ticks={self.ticks} seconds={self.seconds:.2f} us_per_op={self.us_per_op:.0f} "
                f"us_per_delivery={self.us_per_delivery:.1f} "
                f"converged={str(self.converged).lower()}")


def simulate(replicas: int = 100, ops: int = 2000, seed: int = 0, progress: bool = False,
             check: Callable[[], None] = lambda: None) -> SimulationResult:
    """``ops`` random operations on container records, counters and sets, issued
    by random replicas over a network with delay, reordering and duplication,
    with one partition that heals midway; then run until quiet and compare.
    ``check``: called every 100 operations (what it raises ends the run)."""
    rng = random.Random(seed)
    net = MemoryNetwork(seed=seed, delay=(0, 4), duplicate=0.05, reorder=0.05)
    group = [net.add(Replica(f"r{i:03d}")) for i in range(replicas)]
    start = time.perf_counter()
    for i in range(ops):
        r = rng.choice(group)
        rec = r.map(f"containers/c{rng.randrange(50)}")
        x = rng.randrange(5)
        if x == 0:
            rec.register("power_desired").set(rng.choice(["on", "off"]))
        elif x == 1:
            rec.counter("restart_generation").increment()
        elif x == 2:
            r.set("nodes").add(f"n{rng.randrange(10)}")
        elif x == 3:
            r.set("nodes").remove(f"n{rng.randrange(10)}")
        else:
            r.counter("events").increment()
        if i == ops // 3:
            ids = list(net.replicas)
            net.partition(ids[: replicas // 2], ids[replicas // 2:])
        if i == 2 * ops // 3:
            net.heal()
        if i % 5 == 0:
            net.step()
        if i % 100 == 0:
            check()
        if progress and i % max(ops // 20, 1) == 0:
            print(f"  {i}/{ops} ops issued", file=sys.stderr, flush=True)
    net.heal()
    ticks = net.settle()
    seconds = time.perf_counter() - start
    return SimulationResult(replicas, ops, net.delivered, ticks, seconds, net.converged())
