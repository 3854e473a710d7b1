"""Replicas of several groups in one process, over any transport, as one.

:class:`NodeGroups` holds one :class:`~crdt_ops.transport.Node` per group (in memory or
over RabbitMQ, all of one kind), routed by a :class:`~crdt_ops.routing.Routing` rule, and
offers them through one :class:`~crdt_ops.routing.Groups` interface plus what a service
needs of its nodes: one ``write()`` block, ``flush()``, start and stop, health, and the
node of a key (for what is per group: ``confirmed_through``, ``heard_through``). What
holds within and across groups is what :mod:`crdt_ops.routing` says.
:class:`~crdt_ops.transport.amqp.groups.AmqpGroups` is this over one RabbitMQ connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Generic, TypeVar

from crdt_ops.routing import Groups, Routing
from crdt_ops.transport import Node

N = TypeVar("N", bound=Node, covariant=True)


class NodeGroups(Generic[N]):
    """``nodes``: group -> the node of this process in that group (at least one; each
    with the same replica id), routed by ``routing``. ``groups``: the
    :class:`~crdt_ops.routing.Groups` over their replicas (read and subscribe through
    it, before start too). Raises ValueError for no node, or nodes of different ids."""

    def __init__(self, routing: Routing, nodes: Mapping[str, N]) -> None:
        ids = {n.replica_id for n in nodes.values()}
        if len(ids) > 1:
            raise ValueError(f"the nodes of one process share one replica id; got {sorted(ids)}")
        self.routing = routing
        self.nodes: dict[str, N] = dict(nodes)
        self.groups = Groups(routing, {g: n.replica for g, n in self.nodes.items()})

    @property
    def replica_id(self) -> str:
        """This process's replica id, the same in every group."""
        return next(iter(self.nodes.values())).replica_id

    def node_of(self, key: str) -> N:
        """The node of ``key``'s group (raises :class:`~crdt_ops.routing.NotHeld`)."""
        self.groups.replica_of(key)
        return self.nodes[self.routing.group_of(key)]

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Groups]:
        """``async with groups.write() as g: g.map(key).register("x").set(1)``: each
        operation goes to its key's group, is applied at once, and is sent (over
        RabbitMQ: accepted, durable) when the block exits, atomically per group (see
        :mod:`crdt_ops.routing`). Raises what a node's ``write()`` raises: over RabbitMQ
        :class:`~crdt_ops.transport.store.StoreUnavailable`, on entry while any held
        group's store fails (one process's stores share a disk), at the end for a group
        whose store failed. An exception raised inside the block does not undo what it
        applied before: that goes out with the next commit."""
        async with contextlib.AsyncExitStack() as stack:
            for node in self.nodes.values():
                await stack.enter_async_context(node.write())
            yield self.groups

    async def flush(self) -> None:
        """Flush every group that holds local operations not yet handed over (each as
        its node's ``flush()``), concurrently; one such group is flushed in this task (a
        lone write then commits on its writer's turn of the event loop, as a node's
        ``flush()`` does)."""
        pending = [n for n in self.nodes.values() if n.replica.unsent]
        if len(pending) == 1:
            await pending[0].flush()
        elif pending:
            await asyncio.gather(*(n.flush() for n in pending))

    async def store_works(self) -> None:
        """Return once every group's node takes writes again (each node's
        ``store_works()``); at once when none failed."""
        await asyncio.gather(*(n.store_works() for n in self.nodes.values()))

    def health(self) -> dict[str, dict[str, str]]:
        """Each group's node's ``health()``, by group."""
        return {g: n.health() for g, n in self.nodes.items()}

    def overall_health(self) -> dict[str, str]:
        """Per part of the nodes' ``health()``: ``"ok"`` when it is ok in every group; when it
        is wrong in every group (a lost broker), the first group's words, once; else what is
        wrong in each group that is not ok, prefixed by the group's name."""
        by_group = self.health()
        parts = dict.fromkeys(p for h in by_group.values() for p in h)
        for part in parts:
            wrong = [(g, h[part]) for g, h in by_group.items() if h.get(part, "ok") != "ok"]
            if not wrong:
                parts[part] = "ok"
            elif len(wrong) == len(by_group):  # in every group (the broker is gone, say)
                parts[part] = wrong[0][1] + ("" if len(wrong) == 1
                                             else f" (in all {len(wrong)} groups)")
            else:
                parts[part] = "; ".join(f"{g}: {text}" for g, text in wrong)
        return {p: v or "ok" for p, v in parts.items()}

    async def start(self) -> None:
        """Start every group's node, concurrently; returns once all are started. If one
        fails (or the start is cancelled), the others are cancelled, every node is
        stopped, and the first failure is raised as the node raised it."""
        try:
            async with asyncio.TaskGroup() as tg:
                for node in self.nodes.values():
                    tg.create_task(node.start())
        except BaseException as e:
            await self.stop()
            if isinstance(e, BaseExceptionGroup):
                raise e.exceptions[0] from None
            raise

    async def stop(self) -> None:
        """Stop every group's node (each commits what was written), concurrently."""
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)

    async def __aenter__(self) -> NodeGroups[N]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
