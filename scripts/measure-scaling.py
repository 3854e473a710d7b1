"""Figures for docs/scaling.md: how one replica group behaves as it grows.

1. Wire sizes (no broker): a receiver that has seen one operation from each of N other
   replicas (ids like ``worker.node-0042``) writes; the bytes of its next batch of 1 and
   of 500 operations (the batch's deps delta then names all N others: the worst case,
   every other replica wrote since its last batch) and of its heartbeat (its whole clock).
2. Throughput (needs root and Debian's rabbitmq-server): a 3-node cluster of local
   RabbitNodes formed from deploy/rabbitmq/cluster.conf; K ``crdt-ops replica`` processes
   with quorum queues, replica i connected to node i mod 3, each issuing OPS operations
   at full speed in write() blocks of W operations; seconds from launching the processes
   until all K report the same state with every ledger counter exact (so it includes
   process start and joining, about a second); ops/s = K * OPS / seconds, the rate at
   which *every* replica applied the whole group's operations.

Run from the repository root: .venv/bin/python scripts/measure-scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crdt_ops import Replica
from tests.broker import ReplicaProcess, converged, explain, wait_until
from tests.cluster.test_cluster import cluster_config, urls_from
from tools.rabbitnode import RabbitNode


def wire_sizes(n: int) -> tuple[int, int, int]:
    """(bytes of a 1-op batch, of a 500-op batch, of a heartbeat) after hearing n others."""
    me = Replica("worker.node-me")
    others = [Replica(f"worker.node-{i:04d}") for i in range(n)]

    def hear_all() -> None:
        for o in others:
            o.counter("hits").increment()
            for m in o.outgoing():
                me.receive(m)

    hear_all()
    me.counter("hits").increment()
    one = sum(map(len, me.outgoing()))
    hear_all()
    for i in range(500):
        me.map(f"containers/c{i % 30}").register("power_desired").set("on")
    batch = sum(map(len, me.outgoing()))
    return one, batch, len(me.clock_message())


def throughput(nodes: list[RabbitNode], work: Path, k: int, ops: int, per_write: int) -> float:
    group = f"scale-{uuid.uuid4().hex[:8]}"
    procs = [ReplicaProcess(urls_from(nodes, i % len(nodes)), group, f"r{i}", work, ops=ops,
                            seed=i, per_write=per_write, extra=["--queue-type", "quorum"])
             for i in range(k)]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        wait_until(lambda: converged(procs, {p.replica_id: ops for p in procs}), 600,
                   "convergence", explain(procs))
        return k * ops / (time.monotonic() - start)
    finally:
        for p in procs:
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    args = ap.parse_args()
    print("replicas heard | 1-op batch B | 500-op batch B (per op) | heartbeat B")
    for n in (2, 10, 100, 1000) if args.quick else (2, 10, 30, 100, 300, 1000, 3000):
        one, batch, hb = wire_sizes(n)
        print(f"{n:>14} | {one:>12} | {batch:>14} ({batch / 500:.1f}) | {hb:>11}", flush=True)
    runs = [(3, 1000, 500)] if args.quick else [
        (3, 10000, 500), (3, 3000, 10), (6, 5000, 500), (6, 1500, 10), (12, 2500, 500)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = [f"crdt-scale{i}-{uuid.uuid4().hex[:4]}" for i in range(1, 4)]
        nodes = [RabbitNode(name, work / "nodes", config=cluster_config(names))
                 for name in names]
        try:
            for node in nodes:
                node.start()
            print("\nreplicas | ops each | ops per write | s | ops/s applied at every replica")
            for k, ops, per_write in runs:
                run_dir = work / f"k{k}-w{per_write}"
                run_dir.mkdir()
                start = time.monotonic()
                rate = throughput(nodes, run_dir, k, ops, per_write)
                print(f"{k:>8} | {ops:>8} | {per_write:>13} | {time.monotonic() - start:5.1f} | "
                      f"{rate:,.0f}", flush=True)
        finally:
            for node in nodes:
                node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
