"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import TypeVar

from crdt_ops import Replica
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.memory import MemoryBus, MemoryNode

N = TypeVar("N", bound=Node)


def exchange(*replicas: Replica) -> None:
    """Deliver every pending message of every replica to all of them, until quiet."""
    while True:
        msgs = [m for r in replicas for m in r.outgoing()]
        if not msgs:
            return
        for m in msgs:
            for r in replicas:
                r.receive(m)


def send(src: Replica, *dst: Replica) -> list[bytes]:
    """Deliver ``src``'s pending messages to ``dst`` (and return them)."""
    msgs = src.outgoing()
    for m in msgs:
        for r in dst:
            r.receive(m)
    return msgs


#: The platform group of the services' tests in memory (its default cell: ``g.cell.main``).
GROUP = "g"


def one_group(node: N) -> NodeGroups[N]:
    """``node`` as the platform's group of a process, holding no cell: what web takes in
    tests of container records only."""
    from services import model

    return NodeGroups(model.routing(GROUP), {GROUP: node})


def with_cell(node: MemoryNode, cell_bus: MemoryBus) -> NodeGroups[MemoryNode]:
    """``node`` as the platform's group of a process, and a node of the same replica (and
    write policy) on ``cell_bus`` as the default cell's group, started when ``node`` was:
    what a worker (its node record) or a web showing nodes takes in tests."""
    from services import model

    cell = MemoryNode(cell_bus, node.replica_id, policy=node.replica.policy)
    if node in node.bus.nodes:
        cell_bus.nodes.append(cell)
    platform, cell_group = model.groups(GROUP)
    return NodeGroups(model.routing(GROUP), {platform: node, cell_group: cell})


def cell_only(node: N, cell: str | None = None) -> NodeGroups[N]:
    """``node`` as the group of cell ``cell`` (default: the default cell) of a process
    holding that cell only: what a worker holds."""
    from services import model

    return NodeGroups(model.routing(GROUP),
                      {model.cell_group(GROUP, cell or model.DEFAULT_CELL): node})
