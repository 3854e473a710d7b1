"""logic: validates desired changes, places containers in cells and on nodes, moves them
off dead ones.

Reacts to every change of a container, placement or node record (and re-checks once a
second, for nodes that fell silent). Its decisions are writes to its own replica
(services/model.py): a container's home (``cell`` and ``node``) and ``rejected_reason``,
and its placement there: ``assigned_node`` with ``assigned_epoch`` (the epoch of the
node's lease the placement names: services/lease.py) and the copies of ``power_desired``
and ``restart_generation`` the node's worker acts on. It calls nobody.

A container goes to the least loaded fresh node with room, in its own cell while that
cell has one. Naming a (new) home and writing the placement there are two steps with the
first made durable in between (:meth:`Logic.decide`), so that a placement never exists
without the record naming its home, even if logic crashes between the two: the only
placements the record does not name (*orphans*: left over from a move, or from a delete)
name an epoch that is gone or a container that is deleted, and logic removes them. So a
move between two nodes of one cell follows the rule of a move between cells, and holds
when the nodes' records travel apart (docs/scaling.md, "A worker receives only its own
node's records").

A container leaves its node only once the node's epoch is *gone* for sure
(services/liveness.py): its lease ran out, so its worker and guard stopped it.
Until then it stays, however long the node is silent; a broker outage or a pause
of logic itself proves nothing about the nodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crdt_ops.events import ChangeEvent
from crdt_ops.handles import MapHandle
from crdt_ops.transport import Node
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.store import StoreUnavailable
from crdt_ops.transport.waiting import wait_set
from services import model
from services.containers import Containers
from services.index import SLICE_KEYS, ContainerIndex, full_passes
from services.liveness import Liveness

log = logging.getLogger("services.logic")

NO_CAPACITY = "no worker node with free capacity"
#: Seconds between two rebuilds of the index from every record (a safety net: the index is
#: kept from change events, and tests check the two agree). Each rebuild, and the first at
#: start, runs in slices (services/index.py ``full_passes``).
FULL_PASS_S = 60.0


@dataclass(frozen=True)
class Decision:
    """What logic decides for one container: the node to place it on (None: none), and
    the reason it shows (None: none)."""

    container: model.Container
    node: model.Node | None
    reason: str | None


def plan(candidates: Iterable[model.Container], live: dict[str, model.Node], fresh: set[str],
         load: Counter[str], running: Callable[[str | None], int],
         counts: dict[str | None, int], quota: int) -> list[Decision]:
    """The placement rules, in one place (pure). For each of ``candidates`` (in order),
    a container that should run and is not placed on its node's live epoch needs its
    owner under ``quota`` (``running(owner)``: how many of the owner's run now) and a
    fresh node with free capacity (``load``: containers per live node); the least loaded
    such node of the container's cell gets it, or if its cell has none (or it has no
    cell yet) the least loaded of any cell (ties by name). ``load`` and ``counts``
    (owner -> running, filled by ``running``) are updated for each placement. Returns a
    decision for every candidate with a name."""
    out = []
    for c in candidates:
        if c.name is None:
            continue
        n = live.get(c.assigned_node or "")
        placed = n is not None and c.assigned_epoch == n.epoch
        reason, node = None, None
        if c.power_desired == "on" and not placed:
            if running(c.owner) >= quota:
                reason = f"owner {c.owner!r} already runs {quota} containers (quota)"
            else:
                free = [live[name] for name in fresh if load[name] < live[name].capacity]
                if free:
                    home = [n for n in free if n.cell == c.cell]
                    node = min(home or free, key=lambda x: (load[x.name], x.name))
                    load[node.name] += 1
                    counts[c.owner] = running(c.owner) + 1
                else:
                    reason = NO_CAPACITY
        out.append(Decision(c, node, reason))
    return out


def decisions(idx: ContainerIndex, live: dict[str, model.Node], fresh: set[str],
              quota: int, cells: Iterable[str] | None = None) -> list[Decision]:
    """:func:`plan` over the records of ``idx`` a decision may change
    (:meth:`ContainerIndex.pending <services.index.ContainerIndex.pending>`), with the
    nodes' load and the owners' running counts read from the index: what a full pass over
    every record decides, at the cost of what changed. ``cells``: the cells logic holds
    (None: every cell); a record placed in another cell is left alone (logic cannot see
    whether its placement runs).

    A node's load is what should run there, or what its worker last counted running
    (``running`` in its record) when that is more: a container stopped or deleted holds
    its place until its worker has stopped it (SIGTERM, then SIGKILL after the grace), so
    that a Start right after a Stop does not overrun the node's capacity meanwhile."""
    epochs: dict[str, str | None] = {name: n.epoch for name, n in live.items()}
    load = Counter({name: max(len(idx.on_at.get((name, n.epoch or ""), ())), n.running)
                    for name, n in live.items()})
    counts: dict[str | None, int] = {}

    def running(owner: str | None) -> int:
        if owner not in counts:
            counts[owner] = idx.placed_count(idx.owner_on.get(owner, ()), epochs)
        return counts[owner]

    held = None if cells is None else set(cells)
    candidates = [idx.records[cid] for cid in idx.pending(epochs)]
    if held is not None:
        candidates = [c for c in candidates if c.cell is None or c.cell in held]
    return plan(candidates, live, fresh, load, running, counts, quota)


def _home(n: model.Node) -> model.Home:
    """Where a container placed on node ``n`` lives: (its cell, its name)."""
    return (n.cell, n.name)


class Logic:
    """Placement rules: a container that should run needs an owner under quota and a
    live node with free capacity; the least loaded such node gets it. ``margin_s``:
    how long past the end of a silent node's lease (plus a quarter) logic waits
    before it moves the node's containers (services/liveness.py)."""

    def __init__(self, node: NodeGroups[Node], *, quota: int = 20, margin_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        if quota < 1:
            raise ValueError(f"the quota must be at least 1, not {quota}")
        self.node = node
        self.quota = quota
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.liveness = Liveness(monotonic(), margin_s)
        #: the cells logic holds (it places containers in these only)
        self.cells = model.held_cells(node.groups)
        #: the container records joined with their placements (services/containers.py)
        self.containers = Containers(node.groups)
        #: the container records, kept from change events (services/index.py)
        self.index = ContainerIndex()
        #: keys of placements that may be orphans, checked at the next decision
        self.orphans: set[str] = set()
        #: container ids whose record is what a delete left (model.deleted), to remove
        self.leftovers: set[str] = set()
        #: (node, epoch) whose record's lease could not be read, said so
        self._said_unreadable: set[tuple[str, str | None]] = set()
        #: the node records of the cells held, by name, kept from change events (read in
        #: one go when run() starts)
        self.nodes: dict[str, model.Node] = {}
        self._wake = asyncio.Event()

    def _cell_changed(self, event: ChangeEvent) -> None:
        """A record of a cell changed: a node's (its worker's current epoch was heard now),
        or a placement's (an orphan if its container's record names another home)."""
        found = model.placement_of(event.key)
        if found is not None:
            if event.new and not self._names(*found):
                self.orphans.add(event.key)
                self._wake.set()
            return
        name = model.node_name(event.key)
        if name is None:
            return
        if isinstance(event.new, dict):
            self.nodes[name] = model.Node.of(event.key, event.new)
            if event.new.get("epoch"):
                self.liveness.heard(name, event.new["epoch"], self.monotonic())
        else:
            self.nodes.pop(name, None)
        if model.beyond_reports(event.old, event.new):  # not a worker's count of what runs
            self._wake.set()
        elif self.index.rejected and isinstance(event.old, dict) and name in self.nodes \
                and self.nodes[name].running < model.Node.of(event.key, event.old).running:
            self._wake.set()  # a container stopped there: a Start waiting for room may go

    def _presume_fresh(self) -> None:
        """Presume each node's epoch read at the start fresh for what is left of a lease
        since its last beat by the wall clocks (the worker's in the record, logic's now;
        services/liveness.py), so that a restarted logic places at once rather than
        after the next beat (every fifth of a lease)."""
        now_ms, started = self.wall_ms(), self.liveness.started
        for n in self.nodes.values():
            if n.epoch and n.lease_ms and n.heartbeat:
                left_s = (n.lease_ms - max(0, now_ms - n.heartbeat)) / 1000
                if left_s > 0:
                    self.liveness.presume(n.name, n.epoch, started + left_s)

    def _names(self, home: model.Home, cid: str) -> bool:
        """Whether container ``cid``'s record names ``home`` (so its placement there is not
        an orphan)."""
        return model.record_home(self.node.groups.get(model.CONTAINERS + cid)) == home

    def live_nodes(self) -> tuple[dict[str, model.Node], set[str]]:
        """The nodes whose current epoch is not gone (containers on them stay), and of
        those the names of the fresh ones (new containers may go there)."""
        live: dict[str, model.Node] = {}
        fresh: set[str] = set()
        for n in self.nodes.values():
            if not n.epoch:
                continue
            if not n.lease_ms:  # unreadable (a worker of another version?): it may be held
                self._unreadable(n)
                live[n.name] = n  # so what runs there stays; nothing new goes there
                continue
            # what logic heard of the group the node's beats go to
            heard = self.node.node_of(model.node_key(n.cell, n.name)).heard_through()
            if self.liveness.gone(n.name, n.epoch, n.epoch, n.lease_s, heard):
                continue
            live[n.name] = n
            if self.liveness.fresh(n.name, n.epoch, n.lease_s, heard):
                fresh.add(n.name)
        self.liveness.forget({(n.name, n.epoch) for n in live.values() if n.epoch})
        return live, fresh

    def _unreadable(self, n: model.Node) -> None:
        """Say once per epoch that node ``n``'s record has no lease logic can read."""
        if (n.name, n.epoch) in self._said_unreadable:
            return
        self._said_unreadable.add((n.name, n.epoch))
        log.warning("node %s in cell %s: its record has no lease_ms logic can read (a worker "
                    "of another version?); what runs there stays, nothing new is placed "
                    "there, and none of it moves until its worker writes one", n.name, n.cell)

    async def decide(self) -> int:
        """Write every decision the current state calls for; return how many. Reads only
        the records a decision may change (:func:`decisions`), and the nodes.

        A placement at a home (cell, node) the container's record does not name yet goes
        in two steps: the record names the home, logic's store takes that (``flush``), and
        then the placement is written (unless the container was deleted meanwhile).
        Orphaned placements are removed."""
        r = self.node.groups
        writes = self._remove_orphans() + self._remove_leftovers()
        live, fresh = self.live_nodes()
        placing = []
        for d in decisions(self.index, live, fresh, self.quota, self.cells):
            c = d.container
            if d.node is not None:
                if c.home != _home(d.node):
                    model.name_home(r, c.id, _home(d.node))
                    writes += 1
                placing.append((c, d.node))
            elif c.unsynced and c.home is not None:
                self._copy(model.placement(r, c.home, c.id), c)
                writes += 1
            if c.rejected_reason != d.reason:  # a reason that no longer holds goes
                model.container(r, c.id).register("rejected_reason").set(d.reason)
                writes += 1
        if any(c.home != _home(n) for c, n in placing):
            await self.node.flush()  # the homes named are durable before their placements
        for c, n in placing:
            now = self.index.records.get(c.id)  # as it is after the flush's wait
            if now is None or now.power_desired != "on" or not self._names(_home(n), c.id):
                continue  # deleted or stopped meanwhile: its next decision is made anew
            self._place(now, n, c.home)
            writes += 1
        return writes

    def _remove_leftovers(self) -> int:
        """Remove what deletes left of container records (:func:`model.deleted`: logic's
        own fields, written concurrently with the delete; only web may remove a record,
        logic removes its fields); return how many fields went."""
        removed = 0
        for cid in sorted(self.leftovers):
            left = self.node.groups.get(model.CONTAINERS + cid)
            if not model.deleted(left):
                continue
            # logic's own only: another web's concurrent Stop leaves web's power_desired,
            # which logic may not write (its write policy: model.POLICY)
            mine = sorted(set(left) & set(model.LOGIC_FIELDS))
            if not mine:
                continue
            log.info("removing what the delete of %s left of its record: %s", cid,
                     ", ".join(mine))
            rec = model.container(self.node.groups, cid)
            for field in mine:
                rec.remove(field)
                removed += 1
        self.leftovers.clear()
        return removed

    def _place(self, c: model.Container, n: model.Node, was: model.Home | None) -> None:
        """Write ``c``'s placement on node ``n``; ``was``: its home before this decision
        (a move's: its placement there is removed)."""
        r, home = self.node.groups, _home(n)
        if was is not None and was != home:
            log.info("moving %s from %s in cell %s (its epoch is gone) to %s in cell %s", c.id,
                     was[1], was[0], n.name, n.cell)
            r.remove(model.placement_key(was, c.id))  # its epoch is gone: nobody runs it
        else:
            log.info("placing %s on %s in cell %s (epoch %s)", c.id, n.name, n.cell, n.epoch)
        rec = model.placement(r, home, c.id)
        self._copy(rec, c)
        if c.assigned_node != n.name or was != home:
            rec.register("assigned_node").set(n.name)
        rec.register("assigned_epoch").set(n.epoch)

    @staticmethod
    def _copy(rec: MapHandle, c: model.Container) -> None:
        """Copy what the cell's worker acts on into placement ``rec``, where it differs."""
        for field, value in (("power_desired", c.power_desired),
                             ("restart_generation", c.restart_generation)):
            if rec.register(field).value != value:
                rec.register(field).set(value)

    def _remove_orphans(self) -> int:
        """Remove the placements noted as possible orphans that are orphans; return how
        many."""
        removed = 0
        for key in sorted(self.orphans):
            found = model.placement_of(key)
            if found is None:  # under a cell's placements, in no node's: an older layout's
                log.info("removing %s: a placement of the layout before placements were "
                         "filed by node (the container is placed anew)", key)
            else:
                (cell, node_name), cid = found
                if cell not in self.cells or not self.node.groups.get(key) \
                        or self._names((cell, node_name), cid):
                    continue
                log.info("removing %s's placement on %s in cell %s (its record names %s)", cid,
                         node_name, cell,
                         model.record_home(self.node.groups.get(model.CONTAINERS + cid)))
            self.node.groups.remove(key)
            removed += 1
        self.orphans.clear()
        return removed

    def _changed(self, event: ChangeEvent) -> None:
        """A container record changed (joined with its placement): keep the index, note
        its old home's placement as a possible orphan, and decide again unless all that
        changed is logic's own decision or a worker's report (a decision pass ends with
        its writes made; what a restore of logic's store undoes is decided again within
        the loop's second)."""
        self.index.changed(event)
        if model.deleted(event.new):
            self.leftovers.add(model.container_id(event.key))
            self._wake.set()
        old, new = model.record_home(event.old), model.record_home(event.new)
        if old is not None and old != new:  # its placement there may be left over
            self.orphans.add(model.placement_key(old, model.container_id(event.key)))
            self._wake.set()
        elif event.origin != self.node.replica_id and model.beyond_reports(event.old,
                                                                            event.new):
            self._wake.set()

    async def _orphan_passes(self) -> None:
        """Note every placement of the cells held whose record does not name its home (in
        slices of ``SLICE_KEYS`` keys), now and every ``FULL_PASS_S``: the safety net."""
        while True:
            for cell in self.cells:
                prefix = model.placements(cell)
                after: str | None = None
                while True:
                    keys = self.node.groups.keys(prefix, after=after, limit=SLICE_KEYS)
                    for key in keys:
                        found = model.placement_of(key)
                        if found is None or not self._names(*found):
                            self.orphans.add(key)
                    if len(keys) < SLICE_KEYS:
                        break
                    after = keys[-1]
                    await asyncio.sleep(0)
            if self.orphans:
                self._wake.set()
            await asyncio.sleep(FULL_PASS_S)

    async def run(self) -> None:
        r = self.node.groups
        self.containers.subscribe(model.CONTAINERS, self._changed)
        r.subscribe(model.CELLS, self._cell_changed)
        self.nodes = {n.name: n for n in model.nodes(r, self.cells)}
        self._presume_fresh()
        # the index from every record, in slices: now (no decision until it is loaded: it
        # would miss records), then every FULL_PASS_S
        passes = [asyncio.create_task(full_passes(self.index, self.containers,
                                                  every_s=FULL_PASS_S, wake=self._wake,
                                                  name="logic's index")),
                  asyncio.create_task(self._orphan_passes())]
        try:
            while True:
                self._wake.clear()  # first: a change landing while we decide wakes the next
                try:
                    if self.index.loaded and await self.decide():
                        await self.node.flush()
                except StoreUnavailable:  # logged by the store's node; what this pass wrote
                    await self.node.store_works()  # was dropped from memory: decide again
                    continue
                await wait_set(self._wake, 1.0)
        finally:
            for t in passes:
                t.cancel()
