"""Embedding crdt-ops in an asyncio service of one's own: a shop chain's inventory.

Three replicas share one inventory: ``admin`` keeps the catalogue (names and prices),
and each shop (``shop.north``, ``shop.south``) counts its own stock of every item.
The data model, declared once::

    items/<sku>          an OR-map per item
        name, price      LWW registers (price in cents)      written by admin only
        stock/<shop>     a PN-counter per shop               written by that shop only

and its write policy (:data:`POLICY`) says exactly that. Every replica checks it on
every operation, local or remote, so a shop that tries to change a price gets
``Forbidden`` at once and nobody else would ever accept it either. Because only a shop
writes its own counter, "never sell what this shop does not have" holds without any
coordination between replicas.

:class:`Inventory` is the service: what its HTTP handlers (or queue consumers) would
call. It is written against :class:`crdt_ops.transport.Node`, so the same code runs
over the in-memory network (the default: no broker needed) and over RabbitMQ::

    python examples/embed.py
    python examples/embed.py --amqp-url amqp://guest:guest@localhost:5672/

(``CRDT_OPS_AMQP_URL`` in the environment works like ``--amqp-url``.) Over RabbitMQ
the three replicas live in this one process for brevity, each with its own SQLite
store in a temporary directory, in a group of their own that is deleted at the end;
in production each would be a service of its own (see ``crdt-ops replica``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from crdt_ops import ChangeEvent, Forbidden, Rule, WritePolicy
from crdt_ops.handles import MapHandle
from crdt_ops.transport import Node
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.config import Settings
from crdt_ops.transport.memory import MemoryBus, MemoryNode

ITEMS = "items/"
ADMIN = "admin"
SHOPS = ("shop.north", "shop.south")

#: Who writes what: the first rule whose path matches decides.
POLICY = WritePolicy([
    # items/<sku>/stock/<shop>: only the replicas of principal shop.<shop>
    Rule((ITEMS + "*", "stock", "{shop}"), writers=("shop.{shop}",)),
    # everything else of an item (name, price, and removing it): only admin
    Rule((ITEMS + "*",), writers=(ADMIN,)),
])


def shop_name(replica_id: str) -> str:
    """``shop.north`` (or ``shop.north.host-1``, another instance) -> ``north``."""
    return replica_id.split(".")[1]


class Inventory:
    """One service's view of the shared inventory, through its node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _item(self, sku: str) -> MapHandle:
        return self.node.replica.map(ITEMS + sku)

    # -- admin

    async def add_item(self, sku: str, name: str, price_cents: int) -> None:
        async with self.node.write() as r:  # applied here at once, durable when it exits
            item = r.map(ITEMS + sku)
            item.register("name").set(name)
            item.register("price").set(price_cents)

    def on_low_stock(self, threshold: int, alert: Callable[[str, str, int], None]) -> None:
        """Call ``alert(sku, shop, left)`` when a shop's stock of an item drops below
        ``threshold``, as this replica applies the change (its own, or a remote one)."""
        def changed(e: ChangeEvent) -> None:
            old = (e.old or {}).get("stock", {})
            for shop, left in (e.new or {}).get("stock", {}).items():
                if left < threshold <= old.get(shop, threshold):
                    alert(e.key[len(ITEMS):], shop, left)

        self.node.replica.subscribe(ITEMS, changed)

    # -- a shop

    def mine(self, sku: str) -> int:
        """This shop's own stock of ``sku`` (only this shop writes it)."""
        return int(self._item(sku).map("stock").counter(shop_name(self.node.replica_id)).value)

    async def receive_stock(self, sku: str, n: int) -> None:
        async with self.node.write() as r:
            r.map(ITEMS + sku).map("stock").counter(shop_name(r.replica_id)).increment(n)

    async def sell(self, sku: str, n: int) -> bool:
        """Sell ``n`` of ``sku`` from this shop's stock; False (nothing written) when
        this shop has fewer."""
        if self.mine(sku) < n:
            return False
        async with self.node.write() as r:
            r.map(ITEMS + sku).map("stock").counter(shop_name(r.replica_id)).decrement(n)
        return True

    # -- anyone

    def report(self) -> list[str]:
        """One line per item, from this replica's state."""
        lines = []
        for key, item in self.node.replica.items(ITEMS):
            stock = item.get("stock", {})
            shops = ", ".join(f"{shop} {n}" for shop, n in sorted(stock.items()))
            lines.append(f"{key[len(ITEMS):]} {item.get('name', '?'):8} "
                         f"{item.get('price', 0) / 100:6.2f}  stock {sum(stock.values())} "
                         f"({shops})")
        return lines


async def settled(nodes: list[Node], timeout: float = 30.0) -> None:
    """Wait until every replica delivered the same operations (equal clocks and states)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        clocks = [dict(n.replica.clock) for n in nodes]
        states = [n.replica.state() for n in nodes]
        if all(c == clocks[0] for c in clocks) and all(s == states[0] for s in states):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"the replicas did not converge within {timeout}s")
        await asyncio.sleep(0.05)


async def scenario(nodes: list[Node]) -> None:
    admin, north, south = (Inventory(n) for n in nodes)
    alerts: list[str] = []
    admin.on_low_stock(3, lambda sku, shop, left: alerts.append(
        f"admin was alerted: {sku} low at {shop} ({left} left)"))

    await admin.add_item("sku-1", "Widget", 250)
    await admin.add_item("sku-2", "Gadget", 1200)
    print("admin: added sku-1 Widget at 2.50, sku-2 Gadget at 12.00")
    await settled(nodes)

    # both shops write to the same item at the same time: their counters never conflict
    await asyncio.gather(north.receive_stock("sku-1", 10), south.receive_stock("sku-1", 5),
                         north.receive_stock("sku-2", 3))
    print("shop.north: received 10 x sku-1, 3 x sku-2; shop.south: received 5 x sku-1")
    for shop, sku, n in ((north, "sku-1", 8), (south, "sku-1", 2), (south, "sku-2", 1)):
        who = shop.node.replica_id
        if await shop.sell(sku, n):
            print(f"{who}: sold {n} x {sku}")
        else:
            print(f"{who}: cannot sell {n} x {sku}: {shop.mine(sku)} in stock here")

    try:  # the policy: prices are admin's
        async with south.node.write() as r:
            r.map(ITEMS + "sku-1").register("price").set(1)
    except Forbidden as e:
        print(f"shop.south: Forbidden: {e}")

    await settled(nodes)
    print(f"converged: {', '.join(n.replica_id for n in nodes)} hold the same state")
    for line in north.report():
        print(line)
    for line in alerts:
        print(line)


async def main(amqp_url: str | None) -> None:
    replica_ids = (ADMIN, *SHOPS)
    workdir: Path | None = None
    nodes: list[Node]
    if amqp_url:
        group = f"embed-{uuid.uuid4().hex[:8]}"
        workdir = Path(tempfile.mkdtemp(prefix="crdt-ops-embed-"))
        print(f"inventory over RabbitMQ at {urlparse(amqp_url.split(',')[0]).hostname}, "
              f"group {group}")
        nodes = [AmqpNode(Settings(amqp_url=amqp_url, group=group, replica_id=rid,
                                   store=str(workdir / f"{rid}.sqlite"), heartbeat_s=0.5),
                          policy=POLICY) for rid in replica_ids]
    else:
        print("inventory over the in-memory network")
        bus = MemoryBus()
        nodes = [MemoryNode(bus, rid, policy=POLICY) for rid in replica_ids]
    started: list[Node] = []
    try:
        for node in nodes:  # admin first: over RabbitMQ it founds the group, shops join it
            await node.start()
            started.append(node)
        await scenario(nodes)
    finally:
        for node in reversed(started):
            await node.stop()
        if amqp_url and workdir is not None:
            await delete_group(amqp_url, nodes[0], replica_ids)
            shutil.rmtree(workdir, ignore_errors=True)


async def delete_group(amqp_url: str, node: Node, replica_ids: tuple[str, ...]) -> None:
    """Tidy up after the example: delete the group's queues and exchanges (names:
    README.md, "Names operators rely on")."""
    import aio_pika

    assert isinstance(node, AmqpNode)
    queues, exchanges = node.topology.objects(replica_ids)
    conn = await aio_pika.connect(node.settings.amqp_urls[0])
    async with conn:
        channel = await conn.channel()
        for queue in queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        for exchange in exchanges:
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--amqp-url", default=os.environ.get("CRDT_OPS_AMQP_URL"),
                        help="run over RabbitMQ at this URL (default: CRDT_OPS_AMQP_URL; "
                             "neither: the in-memory network)")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.amqp_url))
    except KeyboardInterrupt:
        sys.exit(130)
