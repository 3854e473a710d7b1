"""Random histories of a group whose membership changes, checked for convergence.

``crdt-ops histories --count N`` (or ``python -m tools.sim.histories``) runs N
seeded histories. Each has 3-6 replicas: two or three founders, others that join
mid-run (a join request, admitted by whichever members receive it), members that
retire with their last operations still in flight, and replicas that restart from
their own snapshot. Writes touch every type on a few shared keys, so they are
often concurrent; messages are delivered in random order, some of them twice;
heartbeats and ``compact()`` happen at random moments, and one replica compacts
after every operation.

Checked after every step: two live replicas with equal clocks have equal
``state()``. Checked at every quiescent point (everything delivered, then
heartbeats exchanged and compaction run): every live replica has the state of a
reference replica that received everything and never compacts (an open group).
A failing history prints its seed; ``--seed S --count 1`` replays it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crdt_ops.errors import CrdtError, NotAMember
from crdt_ops.replica import Replica

KEYS = ("k0",)
ACTIONS = ("deliver", "write", "heartbeat", "compact", "join", "rejoin", "retire", "restart")


@dataclass
class Node:
    replica: Replica
    wall: Callable[[], int] | None
    inbox: list[bytes] = field(default_factory=list)
    retired: bool = False
    speed: float = 1.0  # how often it is picked to receive


class Divergence(AssertionError):
    """Two replicas that delivered the same operations show different states."""


class History:
    """One seeded history (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        n_founders = self.rng.choice((2, 3))
        self.total = self.rng.randint(max(3, n_founders), 6)
        self.founders = [f"r{i}" for i in range(n_founders)]
        self.nodes: dict[str, Node] = {}
        self.reference = Replica("reference")
        self.pending_ref: list[bytes] = []
        self.history: list[bytes] = []
        for rid in self.founders:
            self._add(rid)
        self.next_id = n_founders
        self.delivery = self.rng.choice((0.3, 0.5, 0.7))

    def _add(self, rid: str) -> Node:
        wall = self.rng.choice((0, 100, 200, 300))
        clock = (lambda: wall) if wall else None
        compact_every = 1 if rid == "r0" else self.rng.choice((1, 3, 50))
        node = Node(Replica(rid, wall_clock=clock, compact_every=compact_every,
                            members=self.founders), clock, list(self.history),
                    speed=self.rng.choice((0.05, 0.3, 1.0)))
        self.nodes[rid] = node
        return node

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.retired]

    def members(self) -> list[Node]:
        return [n for n in self.live() if n.replica.is_member]

    # ------------------------------------------------------------ the network

    def flush(self, node: Node) -> None:
        for m in node.replica.outgoing():
            self.pending_ref.append(m)
            self.history.append(m)
            for other in self.nodes.values():
                if other is not node and not other.retired:
                    other.inbox.append(m)

    def deliver_one(self) -> bool:
        busy = [n for n in self.live() if n.inbox]
        if not busy:
            return False
        node = self.rng.choices(busy, [n.speed for n in busy])[0]
        i = self.rng.randrange(len(node.inbox))
        msg = node.inbox[i] if self.rng.random() < 0.05 else node.inbox.pop(i)
        node.replica.receive(msg)
        self.flush(node)  # admissions answer join requests
        return True

    # ------------------------------------------------------------ actions

    def write(self, node: Node) -> None:
        r, rng = node.replica, self.rng
        key, value = rng.choice(KEYS), rng.randrange(4)
        x = rng.randrange(14)
        try:
            if x == 0:
                r.register(key + "r").set(value)
            elif x == 1:
                r.mvregister(key + "v").set(value)
            elif x == 2:
                r.set(key + "s").add(value) if value % 2 else r.set(key + "s").remove(value)
            elif x == 3:
                r.flag(key + "f").enable() if value % 2 else r.flag(key + "f").disable()
            elif x == 4:
                r.counter(key + "c").increment(value + 1)
            elif x == 5:
                r.gcounter(key + "g").increment()
            elif x in (6, 7, 11, 12):
                r.map(key).register("state").set(f"{r.replica_id}-{value}")
            elif x == 8:
                r.map(key).counter("n").decrement()
            elif x in (9, 13):
                r.map(key).remove(rng.choice(("state", "n")))
            else:
                r.remove(rng.choice((key, key + "r", key + "s")))
        except NotAMember:
            raise AssertionError(f"{r.replica_id} wrote while not a member") from None

    def step(self) -> None:
        rng = self.rng
        members = self.members()
        action = rng.choices(ACTIONS, [self.delivery, 1 - self.delivery, 0.15, 0.1, 0.06,
                                       0.04, 0.03, 0.03])[0]
        if action == "deliver" or not members:
            if not self.deliver_one() and members:
                self.write(rng.choice(members))
        elif action == "write":
            self.write(rng.choice(members))
        elif action == "heartbeat":
            rng.choice(self.live()).replica.heartbeat()
        elif action == "compact":
            rng.choice(self.live()).replica.compact()
        elif action == "join" and self.next_id < self.total:
            node = self._add(f"r{self.next_id}")
            self.next_id += 1
            node.replica.join()
        elif action == "rejoin":
            waiting = [n for n in self.live() if not n.replica.is_member]
            if waiting:
                rng.choice(waiting).replica.join()  # asks again
        elif action == "retire" and len(members) > 1:
            node = rng.choice(members)
            node.replica.heartbeat(retired=True)
            self.flush(node)
            node.retired = True
            node.inbox.clear()
        elif action == "restart":
            node = rng.choice(self.live())
            old = node.replica
            node.replica = Replica.from_snapshot(old.snapshot(), wall_clock=node.wall,
                                                 compact_every=old.compact_every)
        for node in self.live():
            self.flush(node)
        self.check_equal_clocks()

    # ------------------------------------------------------------ checks

    def check_equal_clocks(self) -> None:
        seen: dict[tuple[tuple[str, int], ...], Node] = {}
        for node in self.live():
            key = tuple(sorted(node.replica.clock.items()))
            other = seen.setdefault(key, node)
            if other is not node and other.replica.state() != node.replica.state():
                raise Divergence(
                    f"seed {self.seed}: {other.replica.replica_id} and "
                    f"{node.replica.replica_id} have clock {dict(key)} but states "
                    f"{other.replica.state()} and {node.replica.state()}")

    def quiesce(self) -> None:
        for _ in range(3):
            while self.deliver_one():
                pass
            for node in self.live():
                node.replica.heartbeat()
                self.flush(node)
            while self.deliver_one():
                pass
            for node in self.live():
                node.replica.compact()
        for m in self.pending_ref:
            self.reference.receive(m)
        self.pending_ref.clear()
        want = self.reference.state()
        for node in self.live():
            got = node.replica.state()
            if got != want:
                raise Divergence(
                    f"seed {self.seed}: at a quiescent point {node.replica.replica_id} "
                    f"(clock {dict(node.replica.clock)}) shows {got}, the uncompacted "
                    f"reference {want}")
        self.check_equal_clocks()

    def run(self, steps: int = 120) -> None:
        for i in range(1, steps + 1):
            self.step()
            if i % 40 == 0:
                self.quiesce()
        self.quiesce()


def run(count: int, seed: int = 0, steps: int = 120,
        progress: Callable[[int], None] | None = None) -> list[str]:
    """Run ``count`` histories with seeds ``seed, seed + 1, ...``; the failures' messages."""
    failures = []
    for i in range(count):
        try:
            History(seed + i).run(steps)
        except (AssertionError, CrdtError) as e:
            failures.append(f"seed {seed + i}: {type(e).__name__}: {e}")
        if progress is not None:
            progress(i + 1)
    return failures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=10_000, help="histories to run")
    p.add_argument("--seed", type=int, default=0, help="the first history's seed")
    p.add_argument("--steps", type=int, default=120, help="steps per history")


def command(args: argparse.Namespace) -> int:
    from services.process import heeding_stops

    check = heeding_stops()
    start = time.monotonic()

    def show(done: int) -> None:
        check()  # a Ctrl-C lost in a finaliser: stop after this history
        if done % 500 == 0 or done == args.count:
            print(f"histories: {done}/{args.count} ({time.monotonic() - start:.0f}s)",
                  file=sys.stderr, flush=True)

    failures = run(args.count, args.seed, args.steps, show)
    for f in failures[:10]:
        print(f, file=sys.stderr)
    print(f"histories={args.count} steps={args.steps} failures={len(failures)} "
          f"seconds={time.monotonic() - start:.1f}")
    return 1 if failures else 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="crdt-ops histories")
    add_arguments(_parser)
    sys.exit(command(_parser.parse_args()))
