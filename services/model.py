"""The data model, declared once: container, placement and node records, who writes what,
and which group holds which record.

The platform is split into *cells* (issue 15). The platform's group ``<group>`` holds what
every cell shares; cell ``<cell>``'s group ``<group>.cell.<cell>`` holds that cell's worker
nodes and the containers placed in it (:func:`routing`). A worker holds its own cell's
group only; logic and web hold the platform's group and every cell's (:func:`held_groups`).
So what a worker receives, applies and stores grows with its cell, not with the platform.

A container is two records:

- ``containers/<id>`` in the platform's group: what the user asked for (``name``,
  ``owner``, ``power_desired``, ``restart_generation``: web writes them, and deletes the
  container by removing the key) and logic's answer (its *home*: the ``cell`` and the
  ``node`` it is placed on; ``rejected_reason``).
- its *placement* ``cells/<cell>/containers/<node>/<id>`` in that cell's group, under
  the prefix of the node it is placed on: logic's copy of ``power_desired`` and
  ``restart_generation`` (what the node's worker acts on), the ``assigned_node`` and
  ``assigned_epoch`` (the epoch of the node's lease the placement names:
  services/lease.py), and the worker's reports in its slot ``workers/<node>``
  (``power_actual``, ``pid``, ``last_error``, ``started_generation``).

A node's record and the placements on it share the node's prefixes
(``cells/<cell>/nodes/<node>``, ``cells/<cell>/containers/<node>/``), and within a cell's
group they are the node's *sub-group* (:data:`NODE_SUBGROUPS`, crdt_ops/subgroups.py): the
node's worker holds that sub-group only, and the broker routes it that sub-group's
messages only, not those of the cell's other nodes; logic and web hold every sub-group.
Within a node's sub-group everything holds that holds within a group; between two nodes'
sub-groups nothing is ordered, as between groups.

Logic alone creates, copies into and removes placements. A container moves to another
node (its node's lease is over, or the node's cell has no room) as logic names the new
home in ``cell`` and ``node``, writes the new placement and removes the old one; it does
so only once the old placement's epoch is *gone* (services/liveness.py), so the old
node's worker and guard stopped it before. Naming comes first and is made durable before
the placement is written (services/logic.py): across groups nothing is ordered
(crdt_ops/routing.py), so a reader joins the two records of a container by the home the
platform's record names (:func:`joined`, services/containers.py): a placement elsewhere is
left over from a move or a delete (an *orphan*), shown nowhere and removed by logic.

A worker can write only its own slot of the placements under its own node's prefix (a
rule on the path), so "only the worker a container is placed on reports on it" needs no
state in the write rule.

A worker node is the OR-map at ``cells/<cell>/nodes/<name>``: its heartbeat, written
every fifth of its lease (``services.lease.beat_interval_s``: 6 s under the default 30 s
lease), reaches its cell's workers, logic and web, not every worker of the platform.

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
from crdt_ops.routing import Groups, NotHeld, Records, Routing
from crdt_ops.subgroups import SubGroups

CONTAINERS = "containers/"
CELLS = "cells/"
#: The cell a worker joins, and the cells logic and web hold, unless told otherwise.
DEFAULT_CELL = "main"

POWER_DESIRED = ("on", "off")
POWER_ACTUAL = ("on", "off", "starting", "stopping", "failed")

#: The fields of a container's record logic writes: its home, and why it is not placed.
LOGIC_FIELDS = ("cell", "node", "rejected_reason")
#: Who writes what; the first rule whose path matches decides.
POLICY = WritePolicy([
    # a worker's reports on a container placed on its node: only into its own slot
    Rule(("cells/*/containers/{node}/*", "workers", "{node}"), writers=("worker.{node}",)),
    # the rest of a placement (copies, assignment), creating and removing it
    Rule(("cells/*/containers/*",), writers=("logic",)),
    Rule(("cells/*/nodes/{node}",), writers=("worker.{node}",)),
    *(Rule(("containers/*", field), writers=("logic",)) for field in LOGIC_FIELDS),
    # name, owner, power_desired, restart_generation, and deleting the record
    Rule(("containers/*",), writers=("web",)),
])
#: The fields logic copies from a container's record into its placement (what the
#: cell's worker acts on).
COPIED = ("power_desired", "restart_generation")

ROLES = ("web", "logic", "worker")

#: Within a cell's group, each node's records (its record, the placements on it) are the
#: node's sub-group, which the node's worker holds (and only it of the cell's workers).
NODE_SUBGROUPS = SubGroups(keys=(CELLS + "*/nodes/{}", CELLS + "*/" + CONTAINERS + "{}"),
                           holders=("worker.{}",))


def routing(group: str) -> Routing:
    """Which group holds which record (:mod:`crdt_ops.routing`), the same in every
    service: the records under ``cells/<cell>/`` the cell's group (:func:`cell_group`),
    every other record the platform's group ``group``."""
    return Routing(group, {CELLS + "{}/": cell_group(group, "{}")})


def subgroups(group: str, held: Iterable[str]) -> dict[str, SubGroups]:
    """The sub-group rule of each of the groups ``held`` of the platform ``group``: the
    cells' :data:`NODE_SUBGROUPS` (the platform's group has none)."""
    return {g: NODE_SUBGROUPS for g in held if g != group}


def cell_group(group: str, cell: str) -> str:
    """The group of cell ``cell`` of the platform whose group is ``group``."""
    return f"{group}.cell.{cell}"


def groups(group: str, cells: Iterable[str] = (DEFAULT_CELL,)) -> list[str]:
    """The groups of the platform ``group`` with ``cells``: the platform's group first (the
    routing's default), then each cell's."""
    return [group, *(cell_group(group, c) for c in cells)]


def held_groups(role: str, group: str, cells: Iterable[str] = (DEFAULT_CELL,)) -> list[str]:
    """The groups a service of ``role`` holds: a worker its cell's only (``cells``: its
    one cell), logic and web the platform's and each of ``cells``'s (:func:`groups`)."""
    cells = list(cells)
    if role == "worker":
        if len(cells) != 1:
            raise ValueError(f"a worker belongs to one cell, not {len(cells)}")
        return [cell_group(group, cells[0])]
    return groups(group, cells)


def held_cells(records: Groups) -> list[str]:
    """The cells whose groups ``records`` holds, in name order."""
    head = cell_group(records.routing.default, "")
    return sorted(g[len(head):] for g in records.replicas if g.startswith(head))


#: The longest name of a cell or a node, in bytes of UTF-8: they are parts of queue names
#: (at most 255 bytes in AMQP 0-9-1's shortstr) and of file names (255 bytes on Linux).
MAX_NAME = 64


def check_name(what: str, name: str) -> str:
    """``name``, if it can name a cell or a node: non-empty, printable, at most
    :data:`MAX_NAME` bytes of UTF-8, without ``/``, ``.``, white space, ``#`` or ``*`` (it
    names a group or a sub-group, and a part of queue and file names); else ValueError
    saying so of ``what``."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME \
            or not name.isprintable() or any(c in "/.#*" or c.isspace() for c in name):
        raise ValueError(f"{what} must be 1 to {MAX_NAME} bytes (UTF-8) of printable "
                         f"characters, without '/', '.', spaces, '#' or '*': {name!r}")
    return name


def check_cell(cell: str) -> str:
    """``cell``, if it names a cell (:func:`check_name`); else ValueError."""
    return check_name("a cell's name", cell)


def node_key(cell: str, name: str) -> str:
    """The key of worker node ``name``'s record in cell ``cell``."""
    return f"{nodes_prefix(cell)}{name}"


def nodes_prefix(cell: str) -> str:
    """The prefix of cell ``cell``'s node records."""
    return f"{CELLS}{cell}/nodes/"


def node_name(key: str) -> str | None:
    """The node a key is the record of (``cells/<cell>/nodes/<name>``), else None."""
    parts = key.split("/")
    return parts[3] if len(parts) == 4 and parts[0] + "/" == CELLS and parts[2] == "nodes" \
        else None


#: Where a container is placed: (cell, node).
Home = tuple[str, str]


def placements(cell: str, node: str | None = None) -> str:
    """The prefix of the placements in cell ``cell``, or (``node``) of those on one of its
    nodes."""
    return f"{CELLS}{cell}/{CONTAINERS}" + ("" if node is None else f"{node}/")


def placement_key(home: Home, cid: str) -> str:
    """The key of container ``cid``'s placement at ``home`` (cell, node)."""
    return placements(*home) + cid


def placement_of(key: str) -> tuple[Home, str] | None:
    """``((cell, node), container id)`` of a placement's key
    (``cells/<cell>/containers/<node>/<id>``), else None."""
    parts = key.split("/")
    if len(parts) == 5 and parts[0] + "/" == CELLS and parts[2] + "/" == CONTAINERS \
            and all(parts[1:]):
        return (parts[1], parts[3]), parts[4]
    return None


def container_id(key: str) -> str:
    """The container id of a container's key or of a placement's key."""
    found = placement_of(key)
    return found[1] if found is not None else key[len(CONTAINERS):]


def principal(role: str, node: str | None = None) -> str:
    """The principal of a service (its replica ids extend it by a dot; over
    RabbitMQ with authentication, its broker user)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role != "worker":
        return role
    return f"worker.{check_name('a node name', node or '')}"


def container(records: Records, cid: str) -> MapHandle:
    """Container ``cid``'s record in the platform's group."""
    return records.map(CONTAINERS + cid)


def name_home(records: Records, cid: str, home: Home) -> None:
    """Name ``home`` (cell, node) in container ``cid``'s record, writing only the fields
    that differ (logic's first step of a placement)."""
    rec = container(records, cid)
    for field, value in zip(("cell", "node"), home, strict=True):
        if rec.register(field).value != value:
            rec.register(field).set(value)


def placement(records: Records, home: Home, cid: str) -> MapHandle:
    """Container ``cid``'s placement at ``home`` (cell, node)."""
    return records.map(placement_key(home, cid))


def node(records: Records, cell: str, name: str) -> MapHandle:
    return records.map(node_key(cell, name))


def report(records: Records, home: Home, cid: str) -> MapHandle:
    """The slot of container ``cid``'s placement at ``home`` where that node's worker
    reports."""
    return placement(records, home, cid).map("workers").map(home[1])


def joined(rec: Any, placed: Any) -> Any:
    """Container record ``rec`` (a plain value, or None) joined with ``placed``, the
    plain value of its placement in the cell ``rec`` names (None: none): a record with
    ``rec``'s fields, the placement's ``assigned_node``, ``assigned_epoch`` and
    ``workers``, and under ``placed`` the placement's copies of :data:`COPIED` (absent
    when there is no placement). ``rec`` itself when it is not a non-empty map."""
    if not isinstance(rec, dict) or not rec or not isinstance(placed, dict) or not placed:
        return rec
    out = dict(rec)
    for f in ("assigned_node", "assigned_epoch", "workers"):
        if f in placed:
            out[f] = placed[f]
    out["placed"] = {f: placed[f] for f in COPIED if f in placed}
    return out


#: The fields of a record that a worker writes to tell what runs: a placement's ``workers``
#: slots (``power_actual``, ``pid``, ``last_error``, ``started_generation``) and its node's
#: ``running`` count. Logic decides nothing from them, and a worker reconciles nothing
#: because of them (they are its own).
REPORTS = ("workers", "running")


def beyond_reports(old: Any, new: Any) -> bool:
    """Whether a record's change from ``old`` to ``new`` (plain values; None: no record)
    touches anything but its reports (:data:`REPORTS`): what logic decides from and a
    worker reconciles (services/logic.py, services/worker.py)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return bool(old != new)
    return ({k: v for k, v in old.items() if k not in REPORTS}
            != {k: v for k, v in new.items() if k not in REPORTS})


def shown_slot(rec: dict[str, Any]) -> dict[str, Any]:
    """The worker slot a container record shows: its ``assigned_node``'s (``{}`` when it
    has none); the other slots are stale reports of nodes it left."""
    node_name = rec.get("assigned_node")
    slots = rec.get("workers")
    slot = slots.get(node_name) if isinstance(slots, dict) and node_name else None
    return slot if isinstance(slot, dict) else {}


def _text(rec: dict[str, Any], name: str) -> str | None:
    """``rec[name]`` if it is a string, else None: a record holds what its writers' rules
    let them write (:data:`POLICY` says who, not what), and a field of the wrong type,
    from a writer of another version or a faulty one, reads as absent rather than
    failing every reader of the record (logic, the workers, web) for good."""
    value = rec.get(name)
    return value if isinstance(value, str) else None


def _count(rec: dict[str, Any], name: str) -> int:
    """``rec[name]`` if it is an integer of 0 or more (no bool; a float of a whole number,
    such as 4000.0, counts as that integer), else 0: as :func:`_text`."""
    value = rec.get(name)
    if type(value) is float and value.is_integer():
        value = int(value)
    return value if type(value) is int and value >= 0 else 0


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
    cell: str | None = None  # the cell its record names (where it is placed)
    node: str | None = None  # the node its record names, in that cell
    #: the placement's copies of power_desired and restart_generation (None, 0: none)
    placed_desired: str | None = None
    placed_generation: int = 0

    @classmethod
    def of(cls, key: str, rec: dict[str, Any]) -> Container:
        """The view of a joined record (:func:`joined`; ``key``: ``containers/<id>``), or
        of a placement alone (``key``: its key; what its cell's worker holds): its worker
        fields from the assigned node's slot. A field of the wrong type reads as absent
        (:func:`_text`, :func:`_count`)."""
        slot = shown_slot(rec)
        placed = rec.get("placed")
        placed = placed if isinstance(placed, dict) else {}
        pid = _count(slot, "pid")
        return cls(
            id=container_id(key), name=_text(rec, "name"), owner=_text(rec, "owner"),
            power_desired=_text(rec, "power_desired") or "off",
            power_actual=_text(slot, "power_actual") or "off",
            restart_generation=_count(rec, "restart_generation"),
            started_generation=_count(slot, "started_generation"),
            assigned_node=_text(rec, "assigned_node"),
            assigned_epoch=_text(rec, "assigned_epoch"), pid=pid or None,
            last_error=_text(slot, "last_error"),
            rejected_reason=_text(rec, "rejected_reason"), cell=_text(rec, "cell"),
            node=_text(rec, "node"), placed_desired=_text(placed, "power_desired"),
            placed_generation=_count(placed, "restart_generation"))

    @property
    def home(self) -> Home | None:
        """The (cell, node) its record names, if it names both."""
        return None if self.cell is None or self.node is None else (self.cell, self.node)

    @property
    def unsynced(self) -> bool:
        """Whether its placement's copies differ from the record (logic copies them)."""
        return self.home is not None and (self.placed_desired, self.placed_generation) != \
            (self.power_desired, self.restart_generation)

    def as_json(self) -> dict[str, Any]:
        """The API's view: every field but the placement's copies."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.name.startswith("placed_")}


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
        """The view of node record ``rec`` at ``key`` (``cells/<cell>/nodes/<name>``). A
        field of the wrong type reads as absent (:func:`_text`, :func:`_count`): a node
        whose capacity or lease so reads is given no container."""
        return cls(name=key.split("/")[3], cell=key.split("/")[1],
                   capacity=_count(rec, "capacity"), heartbeat=_count(rec, "heartbeat"),
                   running=_count(rec, "running"), epoch=_text(rec, "epoch"),
                   lease_ms=_count(rec, "lease_ms"))

    @property
    def lease_s(self) -> float:
        return self.lease_ms / 1000


_UNREAD = object()


def record_home(rec: Any) -> Home | None:
    """The home (cell, node) a container record's plain value names (None: none, or not a
    record, or a deleted one: :func:`deleted`)."""
    if not isinstance(rec, dict) or deleted(rec):
        return None
    cell, node_name = rec.get("cell"), rec.get("node")
    return (cell, node_name) if isinstance(cell, str) and isinstance(node_name, str) else None


def deleted(rec: Any) -> bool:
    """Whether a container record's plain value is what a delete left of it: fields written
    concurrently with the delete by logic (its ``cell``, ``node``, ``rejected_reason``),
    which an observed-remove keeps, without the ``name`` every record is created with
    (web writes it in the create's one block). Such a record is deleted: it has no home,
    and logic removes what is left of it (an empty map stays: nothing lists it)."""
    return isinstance(rec, dict) and bool(rec) and not isinstance(rec.get("name"), str)


def placed_in(records: Records, home: Home | None, cid: str) -> Any:
    """The plain value of container ``cid``'s placement at ``home`` (None: no home, no
    placement, or a cell ``records`` does not hold)."""
    if home is None:
        return None
    try:
        return records.get(placement_key(home, cid))
    except NotHeld:
        return None


def joined_at(records: Records, key: str, rec: Any = _UNREAD) -> Any:
    """The joined value (:func:`joined`) of the container at ``key`` (``containers/<id>``),
    read from ``records`` (``rec``: its record's plain value, when already read). A
    placement in a cell ``records`` does not hold counts as none."""
    if rec is _UNREAD:
        rec = records.get(key)
    return joined(rec, placed_in(records, record_home(rec), key[len(CONTAINERS):]))


def containers(records: Records) -> list[Container]:
    """Every container record, in key order, as it shows (joined with its placement)."""
    return [Container.of(k, joined_at(records, k, v)) for k, v in records.items(CONTAINERS)
            if isinstance(v, dict) and v]


def nodes(records: Records, cells: Iterable[str]) -> list[Node]:
    """Every worker node record of ``cells``, in order of ``cells``, then by name."""
    return [Node.of(k, v) for c in cells for k, v in records.items(nodes_prefix(c))
            if node_name(k) is not None and isinstance(v, dict)]
