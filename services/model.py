"""The data model, declared once: container and node records, and who writes what.

A container is the OR-map at ``containers/<id>``; a worker node is the OR-map at
``nodes/<name>``. Deleting a container is a remove of its key (observed-remove:
a concurrent worker update survives it). ``WRITERS`` says which service role
may write each field; every service writes only through :func:`container` and
:func:`node` handles, and the policy is enforced on apply in a later step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crdt_ops import Replica
from crdt_ops.handles import MapHandle

CONTAINERS = "containers/"
NODES = "nodes/"

POWER_DESIRED = ("on", "off")
POWER_ACTUAL = ("on", "off", "starting", "stopping", "failed")

#: Field -> the service role that writes it.
WRITERS: dict[str, str] = {
    "name": "web",
    "owner": "web",
    "power_desired": "web",
    "restart_generation": "web",
    "assigned_node": "logic",
    "rejected_reason": "logic",
    "power_actual": "worker",
    "pid": "worker",
    "last_error": "worker",
    "started_generation": "worker",
    # node records
    "capacity": "worker",
    "heartbeat": "worker",
    "running": "worker",
}


def container(replica: Replica, cid: str) -> MapHandle:
    return replica.map(CONTAINERS + cid)


def node(replica: Replica, name: str) -> MapHandle:
    return replica.map(NODES + name)


@dataclass(frozen=True)
class Container:
    """A plain view of a container record."""

    id: str
    name: str | None
    owner: str | None
    power_desired: str
    power_actual: str
    restart_generation: int
    started_generation: int
    assigned_node: str | None
    pid: int | None
    last_error: str | None
    rejected_reason: str | None

    @classmethod
    def of(cls, key: str, rec: dict[str, Any]) -> Container:
        return cls(
            id=key[len(CONTAINERS):], name=rec.get("name"), owner=rec.get("owner"),
            power_desired=rec.get("power_desired") or "off",
            power_actual=rec.get("power_actual") or "off",
            restart_generation=rec.get("restart_generation", 0),
            started_generation=rec.get("started_generation", 0),
            assigned_node=rec.get("assigned_node"), pid=rec.get("pid"),
            last_error=rec.get("last_error"), rejected_reason=rec.get("rejected_reason"))

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Node:
    """A plain view of a worker node record."""

    name: str
    capacity: int
    heartbeat: int  # wall-clock milliseconds of the worker's last beat
    running: int

    @classmethod
    def of(cls, key: str, rec: dict[str, Any]) -> Node:
        return cls(name=key[len(NODES):], capacity=rec.get("capacity") or 0,
                   heartbeat=rec.get("heartbeat") or 0, running=rec.get("running") or 0)


def containers(replica: Replica) -> list[Container]:
    """Every container record, in key order."""
    return [Container.of(k, v) for k, v in replica.items(CONTAINERS)
            if isinstance(v, dict) and v]


def nodes(replica: Replica) -> list[Node]:
    return [Node.of(k, v) for k, v in replica.items(NODES) if isinstance(v, dict)]
