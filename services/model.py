"""The data model, declared once: container and node records, and who writes what.

A container is the OR-map at ``containers/<id>``; a worker node is the OR-map at
``cells/<cell>/nodes/<name>``. Deleting a container is a remove of its key
(observed-remove: a concurrent worker update survives it).

Worker nodes belong to *cells* (:func:`routing`): the records under ``cells/<cell>/``
live in the cell's own group, ``<group>.cell.<cell>``, which holds that cell's workers,
logic and web; everything else lives in the platform's group ``<group>``. So a worker's
heartbeat, written every second, reaches its cell's workers, logic and web, not every
worker of the platform.

What a worker reports about a container (``power_actual``, ``pid``,
``last_error``, ``started_generation``) lives in that worker's own slot of the
record, ``workers/<node>``, and a record shows the slot of its
``assigned_node``. So "only the worker a container is assigned to writes its
``power_actual``" needs no state in the write rule: a worker can write only its
own slot (a rule on the path), and a slot of a node the container is not
assigned to is not shown. A worker that loses a container keeps its stale slot,
which never mixes with the new worker's reports.

``POLICY`` is enforced by every replica on every operation, local or remote
(:class:`crdt_ops.policy.WritePolicy`): a service's replica id belongs to its
principal (``web``, ``logic``, ``worker.<node>``: see :func:`principal`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from crdt_ops import Rule, WritePolicy
from crdt_ops.handles import MapHandle
from crdt_ops.routing import Records, Routing

CONTAINERS = "containers/"
CELLS = "cells/"
#: The cell a worker joins, and the cells logic and web hold, unless told otherwise.
DEFAULT_CELL = "main"

POWER_DESIRED = ("on", "off")
POWER_ACTUAL = ("on", "off", "starting", "stopping", "failed")

#: Who writes what; the first rule whose path matches decides.
POLICY = WritePolicy([
    # a worker's reports on a container: only into its own slot
    Rule(("containers/*", "workers", "{node}"), writers=("worker.{node}",)),
    Rule(("containers/*", "assigned_node"), writers=("logic",)),
    Rule(("containers/*", "assigned_epoch"), writers=("logic",)),
    Rule(("containers/*", "rejected_reason"), writers=("logic",)),
    # name, owner, power_desired, restart_generation, and deleting the record
    Rule(("containers/*",), writers=("web",)),
    Rule(("cells/*/nodes/{node}",), writers=("worker.{node}",)),
])

ROLES = ("web", "logic", "worker")


def routing(group: str) -> Routing:
    """Which group holds which record (:mod:`crdt_ops.routing`), the same in every
    service: the records under ``cells/<cell>/`` the cell's group (:func:`cell_group`),
    every other record the platform's group ``group``."""
    return Routing(group, {CELLS + "{}/": cell_group(group, "{}")})


def cell_group(group: str, cell: str) -> str:
    """The group of cell ``cell`` of the platform whose group is ``group``."""
    return f"{group}.cell.{cell}"


def groups(group: str, cells: Iterable[str] = (DEFAULT_CELL,)) -> list[str]:
    """The groups a process of the platform ``group`` holds when it holds ``cells``: the
    platform's group first (the routing's default), then each cell's."""
    return [group, *(cell_group(group, c) for c in cells)]


def check_cell(cell: str) -> str:
    """``cell``, if it names a cell (a non-empty name without ``/``, ``.``, spaces, ``#``
    or ``*``); else ValueError."""
    if not cell or any(c in cell for c in "/. #*"):
        raise ValueError(f"a cell's name must be non-empty, without '/', '.', spaces, '#' or "
                         f"'*': {cell!r}")
    return cell


def node_key(cell: str, name: str) -> str:
    """The key of worker node ``name``'s record in cell ``cell``."""
    return f"{CELLS}{cell}/nodes/{name}"


def node_name(key: str) -> str | None:
    """The node a key is the record of (``cells/<cell>/nodes/<name>``), else None."""
    parts = key.split("/")
    return parts[3] if len(parts) == 4 and parts[0] + "/" == CELLS and parts[2] == "nodes" \
        else None


def principal(role: str, node: str | None = None) -> str:
    """The principal of a service (its replica ids extend it by a dot; over
    RabbitMQ with authentication, its broker user)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role != "worker":
        return role
    if not node or "." in node or "/" in node:
        raise ValueError(f"a worker's node name must be non-empty, without '.' or '/': {node!r}")
    return f"worker.{node}"


def container(replica: Records, cid: str) -> MapHandle:
    return replica.map(CONTAINERS + cid)


def node(replica: Records, cell: str, name: str) -> MapHandle:
    return replica.map(node_key(cell, name))


def report(replica: Records, cid: str, node_name: str) -> MapHandle:
    """The slot of a container record where the worker of ``node_name`` reports."""
    return container(replica, cid).map("workers").map(node_name)


def shown_slot(rec: dict[str, Any]) -> dict[str, Any]:
    """The worker slot a container record shows: its ``assigned_node``'s (``{}`` when it
    has none); the other slots are stale reports of nodes it left."""
    node_name = rec.get("assigned_node")
    slots = rec.get("workers")
    slot = slots.get(node_name) if isinstance(slots, dict) and node_name else None
    return slot if isinstance(slot, dict) else {}


@dataclass(frozen=True, slots=True)
class Container:
    """A plain view of a container record (slotted: logic keeps one per record)."""

    id: str
    name: str | None
    owner: str | None
    power_desired: str
    power_actual: str
    restart_generation: int
    started_generation: int
    assigned_node: str | None
    assigned_epoch: str | None  # the epoch of the node's lease the placement names
    pid: int | None
    last_error: str | None
    rejected_reason: str | None

    @classmethod
    def of(cls, key: str, rec: dict[str, Any]) -> Container:
        """The record's view: its worker fields from the assigned node's slot."""
        node_name = rec.get("assigned_node")
        slot = shown_slot(rec)
        return cls(
            id=key[len(CONTAINERS):], name=rec.get("name"), owner=rec.get("owner"),
            power_desired=rec.get("power_desired") or "off",
            power_actual=slot.get("power_actual") or "off",
            restart_generation=rec.get("restart_generation", 0),
            started_generation=slot.get("started_generation", 0),
            assigned_node=node_name, assigned_epoch=rec.get("assigned_epoch"),
            pid=slot.get("pid"),
            last_error=slot.get("last_error"), rejected_reason=rec.get("rejected_reason"))

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Node:
    """A plain view of a worker node record."""

    name: str
    capacity: int
    heartbeat: int  # wall-clock milliseconds of the worker's last beat (for people)
    running: int
    epoch: str | None  # the epoch of the worker's lease (services/lease.py)
    lease_ms: int  # how long the worker's lease lasts
    cell: str = DEFAULT_CELL  # the cell the node belongs to

    @classmethod
    def of(cls, key: str, rec: dict[str, Any]) -> Node:
        return cls(name=key.split("/")[3], cell=key.split("/")[1],
                   capacity=rec.get("capacity") or 0,
                   heartbeat=rec.get("heartbeat") or 0, running=rec.get("running") or 0,
                   epoch=rec.get("epoch"), lease_ms=rec.get("lease_ms") or 0)

    @property
    def lease_s(self) -> float:
        return self.lease_ms / 1000


def containers(replica: Records) -> list[Container]:
    """Every container record, in key order."""
    return [Container.of(k, v) for k, v in replica.items(CONTAINERS)
            if isinstance(v, dict) and v]


def nodes(replica: Records) -> list[Node]:
    """Every worker node record of every cell held, in key order (by cell, then name)."""
    return [Node.of(k, v) for k, v in replica.items(CELLS)
            if node_name(k) is not None and isinstance(v, dict)]
