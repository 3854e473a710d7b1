"""The project's origin story, acted out by four replicas over the in-memory network.

web flips ``power_desired`` on; logic, reacting to the change, assigns a node;
the worker on that node, reacting in turn, starts the container and sets
``power_actual``; web's replica shows it. Nobody calls anybody.
"""

from __future__ import annotations

from collections.abc import Callable

from crdt_ops.events import ChangeEvent
from crdt_ops.replica import Replica
from crdt_ops.transport.memory import MemoryNetwork

NODES = ("worker-1", "worker-2")


def _logic(replica: Replica, say: Callable[[str], None]) -> None:
    def on_change(e: ChangeEvent) -> None:
        rec = e.new or {}
        if rec.get("power_desired") == "on" and not rec.get("assigned_node"):
            placed = [r.get("assigned_node") for k, r in replica.state().items()
                      if k.startswith("containers/")]
            node = min(NODES, key=placed.count)
            say(f"logic: {e.key} wants power on -> assigning {node}")
            replica.map(e.key).register("assigned_node").set(node)

    replica.subscribe("containers/", on_change)


def _worker(replica: Replica, node: str, say: Callable[[str], None]) -> None:
    def on_change(e: ChangeEvent) -> None:
        rec = e.new or {}
        if rec.get("assigned_node") != node:
            return
        want, have = rec.get("power_desired"), rec.get("power_actual")
        if want == "on" and have != "on":
            say(f"{node}: starting {e.key}")
            replica.map(e.key).register("power_actual").set("on")
            replica.counter(f"nodes/{node}/running").increment()
        elif want == "off" and have == "on":
            say(f"{node}: stopping {e.key}")
            replica.map(e.key).register("power_actual").set("off")
            replica.counter(f"nodes/{node}/running").decrement()

    replica.subscribe("containers/", on_change)


def run_demo(print_: Callable[[str], None] = print, seed: int = 1) -> bool:
    """Run the story; return whether every replica converged."""
    net = MemoryNetwork(seed=seed, delay=(1, 3), reorder=0.1, duplicate=0.1)
    web, logic = net.add(Replica("web")), net.add(Replica("logic"))
    workers = [net.add(Replica(n)) for n in NODES]

    def say(line: str) -> None:
        print_(f"[tick {net.now:3d}] {line}")

    print_("crdt-ops story: web, logic and two workers share state over the in-memory network "
           "(delays, reordering and duplicates on)")
    _logic(logic, say)
    for w in workers:
        _worker(w, w.replica_id, say)
    for i in (1, 2, 3):
        rec = web.map(f"containers/c{i}")
        rec.register("name").set(f"app-{i}")
        rec.register("owner").set("alice")
        rec.register("power_desired").set("on")
        say(f"web: client pressed Start on containers/c{i}")
    net.settle()
    for key, rec in sorted(web.state().items()):
        if key.startswith("containers/"):
            say(f"web sees {key}: desired={rec.get('power_desired')} "
                f"actual={rec.get('power_actual')} node={rec.get('assigned_node')}")
    web.map("containers/c2").register("power_desired").set("off")
    say("web: client pressed Stop on containers/c2")
    net.settle()
    say(f"web sees containers/c2: actual={web.map('containers/c2').register('power_actual').value}")
    ok = net.converged()
    print_(f"converged={str(ok).lower()} replicas={len(net.replicas)} "
           f"messages={net.sent} deliveries={net.delivered}")
    return ok
