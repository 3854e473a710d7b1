"""Cells at scale: the services' own logic and worker code over the in-memory network.

``crdt-ops cells`` (issue 15) runs, in one process, web (its app's indexes and history,
services/web.py, without serving HTTP), logic (services/logic.py) and ``nodes`` workers
(services/worker.py) in cells of ``cell_size`` nodes. Each service holds the groups its
role holds (services/model.py ``held_groups``), one :class:`MemoryNode` per group, and a
group is one :class:`MemoryBus`: every message reaches every member of its group, on a
later event-loop iteration. A worker's containers run in :class:`SimRuntime`, which
records every start and stop across the platform.

A run creates ``containers`` records as web writes them, Starts ``starts`` of them (in
blocks of ``batch``), waits until web shows each one on, stops everything and checks:

- **placed once**: logic assigned each started container to a node exactly once (no
  node died, so nothing moved);
- **started once**: each started container was started exactly once, and never ran on
  two nodes at once (:attr:`World.doubled`);
- **converged**: the members of each group hold the same state and clock.

It reports what the Starts cost: the CPU of the whole process per Start (every service's
work), and the messages received per Start by a worker (the mean over every worker, and
the most), by logic and by web, each net of the background (heartbeats) measured over an
idle window just before the Starts; and what one worker holds (records) against what the
platform holds.

Every replica of every service shares this one process and its event loop, so the
workers beat rarely here (``heartbeat_s``, default 600 s, and their leases 4 beats): a
cell of 100 nodes beating every second would cost this one core 10,000 deliveries a
second per cell. In a deployment each worker is a process of its own; what heartbeats
cost a worker there is measured over the broker (``python -m tools.bench cells``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from crdt_ops.events import ChangeEvent
from crdt_ops.subgroups import NONE
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode
from services import model
from services.containers import Containers
from services.logic import Logic
from services.runtime import StartWithdrawn
from services.web import make_app
from services.worker import Worker

GROUP = "sim"


@dataclass
class World:
    """What runs where, across every node of the platform."""

    #: container id -> how many times it was started, on any node
    starts: Counter[str] = field(default_factory=Counter)
    #: container id -> the node it runs on now
    where: dict[str, str] = field(default_factory=dict)
    #: starts of a container that ran on another node at that moment
    doubled: int = 0
    next_pid: int = 1


class SimRuntime:
    """A node's containers, in memory (services/runtime.py's ``Runtime``), recorded in
    the platform's :class:`World`."""

    def __init__(self, node: str, world: World) -> None:
        self.node, self.world = node, world
        self.instances: dict[str, int] = {}
        self.generations: dict[str, int] = {}

    def start(self, cid: str, generation: int = 0,
              may_start: Callable[[], bool] = lambda: True) -> int:
        if not may_start():
            raise StartWithdrawn(cid)
        w = self.world
        if w.where.get(cid, self.node) != self.node:
            w.doubled += 1
        w.where[cid] = self.node
        w.starts[cid] += 1
        w.next_pid += 1
        self.instances[cid] = w.next_pid
        self.generations[cid] = generation
        return w.next_pid

    def generation(self, cid: str) -> int | None:
        return self.generations.get(cid) if cid in self.instances else None

    def stop(self, cid: str, grace_s: float = 5.0) -> None:
        if self.instances.pop(cid, None) is not None and self.world.where.get(cid) == self.node:
            del self.world.where[cid]

    def stop_all(self, cids: Iterable[str], grace_s: float = 5.0) -> None:
        for cid in list(cids):
            self.stop(cid, grace_s)

    def running(self) -> dict[str, int]:
        return dict(self.instances)

    def pid(self, cid: str) -> int | None:
        return self.instances.get(cid)

    def guard_args(self) -> list[str]:
        return []

    def adopt_strays(self) -> dict[str, int]:
        return {}  # nothing runs unrecorded here


@dataclass
class CellsResult:
    """One run's sizes, checks and costs (see the module docstring)."""

    nodes: int
    cells: int
    containers: int
    starts: int
    placed_once: bool
    started_once: bool
    doubled: int
    converged: bool
    starts_s: float  # wall seconds from the first Start to the last one on at web
    cpu_ms_per_start: float  # net of the background
    raw_cpu_ms_per_start: float  # all the process's CPU over the Starts, per Start
    worker_msgs_per_start: float  # mean over every worker
    worker_msgs_per_start_max: float
    logic_msgs_per_start: float
    web_msgs_per_start: float
    background_cpu: float  # share of a core the idle platform used (heartbeats)
    worker_records: int  # records one worker holds at the end (the most)
    platform_records: int  # records of every group together
    seconds: float

    @property
    def ok(self) -> bool:
        return self.placed_once and self.started_once and self.converged and not self.doubled

    def line(self) -> str:
        return (f"{self.nodes} nodes in {self.cells} cells, {self.containers} containers, "
                f"{self.starts} Starts in {self.starts_s:.1f} s: "
                f"placed once {'yes' if self.placed_once else 'NO'}, "
                f"started once {'yes' if self.started_once else 'NO'} "
                f"(doubled {self.doubled}), converged {'yes' if self.converged else 'NO'}; "
                f"per Start: {self.raw_cpu_ms_per_start:.2f} ms CPU (whole process), "
                f"{self.cpu_ms_per_start:.2f} ms net of the idle platform's "
                f"{100 * self.background_cpu:.0f} % of a core; messages "
                f"received by a worker {self.worker_msgs_per_start:.3f} (mean; most "
                f"{self.worker_msgs_per_start_max:.3f}), by logic "
                f"{self.logic_msgs_per_start:.2f}, by web {self.web_msgs_per_start:.2f}; "
                f"a worker holds {self.worker_records} records of the platform's "
                f"{self.platform_records} ({self.seconds:.0f} s in all)")


def _holding(buses: dict[str, MemoryBus], role: str, replica_id: str,
             cells: list[str]) -> NodeGroups[MemoryNode]:
    """A service of ``role``'s replicas: one node per group it holds (a cell's with the
    cells' sub-group rule: a worker is handed its own node's messages only)."""
    held = model.held_groups(role, GROUP, cells)
    rules = model.subgroups(GROUP, held)
    return NodeGroups(model.routing(GROUP), {
        g: MemoryNode(buses[g], replica_id, policy=model.POLICY, subgroups=rules.get(g, NONE))
        for g in held})


async def _until(check: Callable[[], bool], timeout_s: float, what: str,
                 progress: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    shown = time.monotonic()
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"cells simulation: {what} did not happen within {timeout_s:.0f} s"
                               + (f" ({progress()})" if progress else ""))
        if progress is not None and time.monotonic() - shown > 5:
            print(f"  ... {what}: {progress()}", file=sys.stderr, flush=True)
            shown = time.monotonic()
        await asyncio.sleep(0.05)


def _received(groups: NodeGroups[MemoryNode]) -> int:
    return sum(n.received for n in groups.nodes.values())


async def simulate(nodes: int, containers: int, starts: int, *, cell_size: int = 100,
                   capacity: int = 50, batch: int = 500, heartbeat_s: float = 600.0,
                   idle_s: float = 20.0, seed: int = 0, timeout_s: float = 3600.0,
                   progress: bool = False) -> CellsResult:
    """One run (see the module docstring). ``capacity``: containers a node runs at most;
    ``heartbeat_s``: the workers' heartbeat (their lease: 4 of them); ``idle_s``: the idle
    window that measures the background; ``timeout_s``: how long each phase may take.
    Raises ValueError for sizes that cannot work (more Starts than containers, or than the
    nodes can run)."""
    if not 1 <= starts <= containers:
        raise ValueError(f"--starts must be from 1 to --containers ({containers}), not {starts}")
    if starts > nodes * capacity:
        raise ValueError(f"{starts} Starts do not fit on {nodes} nodes of capacity {capacity}")
    began = time.monotonic()

    def say(text: str) -> None:
        if progress:
            print(f"  {text} ({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)

    rng = random.Random(seed)
    cells = [f"c{i:03d}" for i in range(math.ceil(nodes / cell_size))]
    buses = {g: MemoryBus() for g in model.groups(GROUP, cells)}
    web = _holding(buses, "web", "web", cells)
    logic_groups = _holding(buses, "logic", "logic", cells)
    world = World()
    workers: list[Worker] = []
    held: list[NodeGroups[MemoryNode]] = []  # each worker's groups (its cell's)
    tmp = Path(tempfile.mkdtemp(prefix="crdt-ops-cells-"))
    for i in range(nodes):
        name = f"n{i:04d}"
        cell = cells[i // cell_size]
        held.append(_holding(buses, "worker", model.principal("worker", name), [cell]))
        workers.append(Worker(held[-1], name, SimRuntime(name, world), cell=cell,
                              capacity=capacity, heartbeat_s=heartbeat_s,
                              lease_s=4 * heartbeat_s, reconcile_s=heartbeat_s,
                              state_dir=tmp / name, use_guard=False, runtime_thread=False))
    for g in (web, logic_groups, *held):
        await g.start()
    make_app(web)  # web's listing and history, kept from the changes as web keeps them
    logic = Logic(logic_groups, quota=containers, margin_s=1.0)
    assigned: Counter[str] = Counter()

    def placed(event: ChangeEvent) -> None:
        found = model.placement_of(event.key)
        old = event.old if isinstance(event.old, dict) else {}
        new = event.new if isinstance(event.new, dict) else {}
        was = (old.get("assigned_node"), old.get("assigned_epoch"))
        now = (new.get("assigned_node"), new.get("assigned_epoch"))
        if found and all(now) and now != was:  # (logic writes the two one after the other)
            assigned[found[1]] += 1
    logic_groups.groups.subscribe(model.CELLS, placed)
    tasks = [asyncio.create_task(logic.run())]
    tasks += [asyncio.create_task(w.run()) for w in workers]
    try:
        await _until(lambda: len(logic.live_nodes()[1]) == nodes, timeout_s,
                     "every node fresh at logic", lambda: f"{len(logic.live_nodes()[1])} fresh")
        say(f"{nodes} nodes in {len(cells)} cells are up")
        cids = [f"{rng.getrandbits(48):012x}" for _ in range(containers)]
        for at in range(0, containers, 1000):
            async with web.write() as r:
                for i, cid in enumerate(cids[at:at + 1000], at):
                    rec = model.container(r, cid)
                    rec.register("name").set(f"c-{i}")
                    rec.register("owner").set(f"owner-{i % 1000}")
                    rec.register("power_desired").set("off")
            await asyncio.sleep(0)
        await _until(lambda: logic.index.loaded and len(logic.index.records) == containers,
                     timeout_s, "logic to hold every record",
                     lambda: f"{len(logic.index.records)} of {containers}")
        say(f"{containers} containers created")
        chosen = rng.sample(cids, starts)
        shown = Containers(web.groups)

        def counts() -> tuple[list[int], int, int, float, float]:
            return ([_received(g) for g in held], _received(logic_groups), _received(web),
                    time.process_time(), time.monotonic())
        idle0 = counts()
        await asyncio.sleep(idle_s)
        idle1 = counts()
        span = idle1[4] - idle0[4]
        background = ([(b - a) / span for a, b in zip(idle0[0], idle1[0], strict=True)],
                      (idle1[1] - idle0[1]) / span, (idle1[2] - idle0[2]) / span,
                      (idle1[3] - idle0[3]) / span)
        before = idle1
        cpu0, t0 = time.process_time(), time.monotonic()
        for at in range(0, starts, batch):
            async with web.write() as r:
                for cid in chosen[at:at + batch]:
                    model.container(r, cid).register("power_desired").set("on")
            await asyncio.sleep(0)
        pending = set(chosen)

        def all_on() -> bool:
            for cid in list(pending):
                key = model.CONTAINERS + cid
                rec = shown.get(key)
                if isinstance(rec, dict) and model.Container.of(key, rec).power_actual == "on":
                    pending.discard(cid)
            return not pending
        await _until(all_on, timeout_s, "every Start on at web",
                     lambda: f"{starts - len(pending)} of {starts} on")
        raw_cpu, starts_s = time.process_time() - cpu0, time.monotonic() - t0
        cpu = raw_cpu - background[3] * starts_s
        per_worker = [(_received(g) - b - rate * starts_s) / starts
                      for g, b, rate in zip(held, before[0], background[0], strict=True)]
        logic_msgs = (_received(logic_groups) - before[1] - background[1] * starts_s) / starts
        web_msgs = (_received(web) - before[2] - background[2] * starts_s) / starts
        say(f"{starts} Starts on in {starts_s:.1f} s")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        shutil.rmtree(tmp, ignore_errors=True)  # the workers' lease files
    everyone = [web, logic_groups, *held]
    for _ in range(20):  # what is in flight is delivered; what that writes goes out
        for g in everyone:
            await g.flush()
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)
    converged = all(_same(bus) for bus in buses.values())
    holds = [sum(len(n.replica.state()) for n in g.nodes.values()) for g in held]
    platform = sum(len(bus.nodes[0].replica.state()) for bus in buses.values() if bus.nodes)
    return CellsResult(
        nodes=nodes, cells=len(cells), containers=containers, starts=starts,
        placed_once=all(assigned[c] == 1 for c in chosen) and sum(assigned.values()) == starts,
        started_once=all(world.starts[c] == 1 for c in chosen)
        and sum(world.starts.values()) == starts,
        doubled=world.doubled, converged=converged, starts_s=starts_s,
        cpu_ms_per_start=cpu / starts * 1000, raw_cpu_ms_per_start=raw_cpu / starts * 1000,
        worker_msgs_per_start=sum(per_worker) / len(per_worker),
        worker_msgs_per_start_max=max(per_worker), logic_msgs_per_start=logic_msgs,
        web_msgs_per_start=web_msgs, background_cpu=background[3],
        worker_records=max(holds), platform_records=platform,
        seconds=time.monotonic() - began)


def _same(bus: MemoryBus) -> bool:
    """Whether every member of the group holds the same state and clock, of what it holds
    (a worker: its own node's sub-group, crdt_ops/subgroups.py)."""
    if not bus.nodes:
        return True
    replicas = [n.replica for n in bus.nodes]
    whole = next((r for r in replicas if r.held_subgroup is None), replicas[0])
    state, clock = whole.state(), dict(whole.clock)
    rule = whole.subgroups
    return all(r.state() == rule.held_state(state, r.replica_id)
               and dict(r.clock) == rule.held_clock(clock, r.replica_id) for r in replicas)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", default="100,1000",
                   help="worker nodes, one run per comma-separated size (default 100,1000)")
    p.add_argument("--cell-size", type=int, default=100, help="nodes per cell (default 100)")
    p.add_argument("--containers-per-node", type=int, default=100,
                   help="containers created per node (default 100: 100,000 at 1,000 nodes)")
    p.add_argument("--starts-per-node", type=int, default=10,
                   help="containers started per node (default 10: 10,000 at 1,000 nodes)")
    p.add_argument("--heartbeat-s", type=float, default=600.0,
                   help="the workers' heartbeat in seconds (their lease: 4 of them; "
                        "default 600: every node's beats share this one process)")
    p.add_argument("--idle-s", type=float, default=60.0,
                   help="the idle window before the Starts that measures the background "
                        "(default 60: one of logic's full passes, every 60 s, falls in it)")
    p.add_argument("--seed", type=int, default=0)


def command(args: argparse.Namespace) -> int:
    """``crdt-ops cells``: one run per size of ``--nodes``; exit 1 if a check failed."""
    try:
        sizes = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        print(f"crdt-ops cells: --nodes must be comma-separated integers, not {args.nodes!r}",
              file=sys.stderr)
        return 2
    if any(n < 1 for n in sizes):
        print("crdt-ops cells: --nodes must be at least 1", file=sys.stderr)
        return 2
    # one line per placement and per start is the services' log; here it would be most
    # of the output
    logging.getLogger("services").setLevel(logging.WARNING)
    ok = True
    for n in sizes:
        print(f"simulating {n} nodes in cells of {args.cell_size}, "
              f"{n * args.containers_per_node} containers, {n * args.starts_per_node} Starts "
              "...", file=sys.stderr, flush=True)
        result = asyncio.run(simulate(n, n * args.containers_per_node, n * args.starts_per_node,
                                      cell_size=args.cell_size, heartbeat_s=args.heartbeat_s,
                                      idle_s=args.idle_s, seed=args.seed, progress=True))
        print(result.line(), flush=True)
        ok = ok and result.ok
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tools.sim.cells", description=__doc__)
    add_arguments(p)
    sys.exit(command(p.parse_args()))


if __name__ == "__main__":
    main()
