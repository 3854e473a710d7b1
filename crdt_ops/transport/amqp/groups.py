"""Replicas of several groups in one process, over one broker connection.

A platform split into groups (cells) by a :class:`~crdt_ops.routing.Routing` rule has
processes that need some of the groups only: a worker its own cell, a front end all of
them. :class:`AmqpGroups` holds one :class:`~crdt_ops.transport.amqp.node.AmqpNode` per
group it is given, all over one RabbitMQ connection (one TCP connection and AMQP
handshake, however many groups; each group has its own channels), and offers them as
:class:`~crdt_ops.transport.groups.NodeGroups` does: one
:class:`~crdt_ops.routing.Groups` interface (handles, reads, scans and change events
routed by key) and one ``write()`` block.

Per group, everything is as for one :class:`AmqpNode`: its own store
(:func:`store_for`), queue, stream, membership, heartbeats, snapshots, write policy and
authentication; the same replica id in every group. What holds across groups is what
:mod:`crdt_ops.routing` says: nothing is ordered between groups, and a block that writes
to two groups is durable per group (each group's part is accepted when the block exits;
if one group's store fails, the other group's part may still have been accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from crdt_ops.policy import OPEN, WritePolicy
from crdt_ops.routing import Routing
from crdt_ops.subgroups import NONE, SubGroups
from crdt_ops.transport import metrics
from crdt_ops.transport.amqp.connection import FailoverConnection, redact_urls, retrying
from crdt_ops.transport.amqp.node import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import default_store_path
from crdt_ops.transport.groups import NodeGroups
from crdt_ops.transport.loop_lag import LoopLag
from crdt_ops.transport.topology import Topology

log = logging.getLogger(__name__)


def store_for(settings: Settings, group: str, name: str, default: str | None = None) -> str:
    """The store file of ``group``: for ``default`` (the routing's default group),
    ``settings.store`` itself (a process that held that one group before keeps its file);
    for another group ``settings.store`` with ``.<group>`` before its suffix (the services'
    cell ``eu1`` of group ``default``: ``web.sqlite`` -> ``web.default.cell.eu1.sqlite``; a
    worker holds its cell's group only, so ``--store w.sqlite`` is ``w.default.cell.eu1.sqlite``);
    without ``settings.store``, the default ``crdt-ops.<group>.<replica id or name>.sqlite``
    (``crdt-ops.default.cell.eu1.worker.n1.sqlite``)."""
    if not settings.store:
        return default_store_path(dataclasses.replace(settings, group=group),
                                  settings.replica_id or name)
    if group == default:
        return settings.store
    path = Path(settings.store)
    return str(path.with_name(f"{path.stem}.{group}{path.suffix or '.sqlite'}"))


class AmqpGroups(NodeGroups[AmqpNode]):
    """Replicas of ``groups`` (names, at least one), routed by ``routing``, each an
    :class:`AmqpNode` with ``settings`` but its own ``group`` and store
    (:func:`store_for`), all with one replica id (``settings.replica_id``, else the one
    the first group's store remembers, else a new one), over one connection.
    ``policies``: a write policy per group (default: open); ``subgroups``: a sub-group rule
    per group (:mod:`crdt_ops.subgroups`; default: none); ``name`` and ``wall_clock`` as
    for :class:`AmqpNode`. ``sole``: a principal (``logic``, ``worker.<node>``) of which
    one process at a time may run, whatever the replica ids and cells: every node of this
    process holds that principal's holder queue in the routing's default group
    (``crdt.G.<sole>.held``,
    :class:`~crdt_ops.transport.amqp.holder.Holder`) over the one connection, and the nodes
    of a second such process wait in :meth:`start` until it is free.
    ``settings.bootstrap`` (a peer's snapshot) starts the
    routing's default group only, when its store is new; the other groups start from
    their streams.

    ``async with AmqpGroups(...) as node:`` starts every group (connect, declare, join)
    and stops them on exit. ``node.groups`` is the :class:`~crdt_ops.routing.Groups` to
    read and subscribe through (before start too); ``node.nodes`` the nodes by group.
    Raises ValueError for a group name :class:`Settings` refuses or given twice, and what
    :class:`AmqpNode` raises for its store."""

    def __init__(self, settings: Settings, routing: Routing, groups: Iterable[str], *,
                 name: str = "replica", wall_clock: Callable[[], int] = time.time_ns,
                 policies: Mapping[str, WritePolicy] | None = None,
                 subgroups: Mapping[str, SubGroups] | None = None,
                 sole: str | None = None) -> None:
        names = list(groups)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"give each group once, at least one; got {names}")
        self.settings = settings
        # one name for every node, in the routing's default group (held or not: a worker
        # of node n in any cell takes the same one): taken over the one connection
        held = (None if sole is None else
                Topology.of(dataclasses.replace(settings, group=routing.default)).holder(sole))
        nodes: dict[str, AmqpNode] = {}
        lag: LoopLag | None = None  # one probe of the one event loop, for every group
        deposed: str | None = None  # the id whose first store was set aside: all of its are
        for group in names:
            rid = settings.replica_id or (next(iter(nodes.values())).replica_id if nodes else "")
            # a peer's snapshot (--bootstrap) is of one group: the default's
            bootstrap = settings.bootstrap if group == routing.default else ""
            s = dataclasses.replace(settings, group=group, metrics_port=0, replica_id=rid,
                                    store=store_for(settings, group, name, routing.default),
                                    bootstrap=bootstrap)
            try:
                nodes[group] = AmqpNode(s, name=name, wall_clock=wall_clock,
                                        policy=(policies or {}).get(group, OPEN), loop_lag=lag,
                                        subgroups=(subgroups or {}).get(group, NONE),
                                        sole=held, deposed_id=deposed, principal=sole)
                lag = nodes[group].loop_lag
                deposed = deposed or nodes[group].durable.set_aside_id
            except BaseException:
                for node in nodes.values():
                    node.durable.store.close()
                raise
        super().__init__(routing, nodes)
        self._conn: FailoverConnection | None = None
        self._deposing = False
        set_up = asyncio.Barrier(len(nodes))  # (none pumps while another may be deposed)
        # after a reconnection, every group is read before any of them publishes
        retake = next(iter(nodes.values())).retake
        for node in nodes.values():  # (instead of marking its own store: see _depose_all)
            node.on_deposed[:] = [self._depose_all]
            node.set_up = set_up
            if retake is not None and node.retake is not retake:
                retake.readers.append(node.retake_reader())
                node.retake = retake

    def _depose_all(self) -> None:
        """One node was deposed: so is the process. Every node's store is marked, in the
        order the groups were given, then every node is deposed (:meth:`AmqpNode.depose`).
        Opened again, the first group's store is opened first, and when it is set aside,
        so is every store of its replica id (:mod:`~crdt_ops.transport.deposition`): a
        crash after the first mark leaves none of the process's stores to send."""
        if self._deposing:
            return
        self._deposing = True
        for node in self.nodes.values():
            node.durable.depose()
        for node in self.nodes.values():
            node.depose()

    async def sole_lost(self) -> None:
        """Return once one of the nodes lost its ``sole`` holder queue to another process
        (:attr:`Holder.sole_lost <crdt_ops.transport.amqp.holder.Holder.sole_lost>`): the
        process's part is over (the services exit: a supervisor starts it again, and it
        waits as the standby). Never returns without ``sole``."""
        waits = [asyncio.ensure_future(n.sole_lost.wait()) for n in self.nodes.values()]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def snapshot(self) -> None:
        """:meth:`AmqpNode.snapshot` of every group (each into its own store)."""
        for node in self.nodes.values():
            node.snapshot()

    async def start(self) -> None:
        """Open the connection (retrying with backoff until the broker answers), then
        start every group's node on it, concurrently; returns once this replica is a
        member of every group. Raises as :meth:`AmqpNode.start` does."""
        s = self.settings
        what = (f"join group {next(iter(self.nodes))}" if len(self.nodes) == 1
                else f"join groups {', '.join(self.nodes)}")
        async for attempt in retrying(what, s.amqp_url):
            with attempt:
                self._conn = await FailoverConnection.of(s, self.replica_id)
        for node in self.nodes.values():
            node.shared_connection = self._conn
        await super().start()
        if len(self.nodes) > 1:
            log.info("replica %s holds %d groups (%s) over one connection to %s",
                     self.replica_id, len(self.nodes), ", ".join(self.nodes),
                     redact_urls(s.amqp_url))
        metrics.serve(s.metrics_port, s.metrics_host)

    async def stop(self) -> None:
        """Stop every group's node (each commits what was written), then close the
        connection."""
        await super().stop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> AmqpGroups:
        await self.start()
        return self
