"""Broker-enforced identities on a real RabbitMQ node of the test's own (RabbitNode,
so users are named exactly as in a deployment): the provisioning script's
users (deploy/make_definitions.py) reach only what they own, RabbitMQ vouches for
each message's user_id, and replicas with ``--auth user-id`` and the services'
write policy accept nothing forged or out of role."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

from crdt_ops import Replica
from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.auth import message
from crdt_ops.transport.config import Settings
from deploy.make_definitions import apply, definitions, demo_password, principals
from services import model
from tests.broker import until
from tools.rabbitnode import RabbitNode

GROUP = "secure"
#: a group of its own for a test that makes a member's queue refuse messages
REFUSING = "refusing"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    node = RabbitNode("crdt-test-auth", tmp_path_factory.mktemp("rabbit")).start()
    try:
        apply(definitions([GROUP, REFUSING], principals(["w1", "w2"])), node.node)
        yield node
    finally:
        node.destroy()


def url(broker: RabbitNode, user: str) -> str:
    return f"amqp://{user}:{demo_password(user)}@127.0.0.1:{broker.port}/"


async def bind(channel: aio_pika.abc.AbstractChannel, queue: str, exchange: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).bind(exchange)


def test_a_worker_user_cannot_declare_bind_or_delete_what_it_does_not_own(
        broker: RabbitNode) -> None:
    g = f"crdt.{GROUP}"

    async def check() -> None:
        admin = await aio_pika.connect(url(broker, "admin"))
        conn = await aio_pika.connect(url(broker, "worker.w1"))
        async with admin, conn:
            await (await admin.channel()).declare_queue(f"{g}.web", durable=True)

            async def refused(attempt: Callable[[aio_pika.abc.AbstractChannel], object]) -> None:
                ch = await conn.channel()
                with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                    await attempt(ch)  # type: ignore[misc]

            await refused(lambda ch: ch.declare_exchange(f"{g}.mine", durable=True))
            await refused(lambda ch: ch.declare_queue(f"{g}.web", durable=True))
            await refused(lambda ch: ch.declare_queue(f"{g}.worker.w2", durable=True))
            await refused(lambda ch: ch.exchange_delete(g))
            await refused(lambda ch: ch.queue_delete(f"{g}.log"))
            await refused(lambda ch: ch.queue_delete(f"{g}.web"))
            await refused(lambda ch: ch.queue_delete(f"{g}.dead"))
            await refused(lambda ch: bind(ch, f"{g}.web", g))
            # what it owns: its own queues, bound to the group's exchange
            ch = await conn.channel()
            own = await ch.declare_queue(f"{g}.worker.w1.extra", durable=True)
            await own.bind(g)
            await refused(lambda ch: bind(ch, f"{g}.worker.w1.extra", f"{g}.dlx"))
            await own.delete()
            # RabbitMQ refuses a message claiming another user
            ch = await conn.channel(publisher_confirms=True)
            ex = await ch.get_exchange(g)
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await ex.publish(aio_pika.Message(b"x", user_id="web"), routing_key="")
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(f"amqp://web:wrong-password@127.0.0.1:{broker.port}/")

    asyncio.run(check())


@contextlib.asynccontextmanager
async def service(broker: RabbitNode, tmp: Path, principal: str,
                  group: str = GROUP) -> AsyncIterator[AmqpNode]:
    node = AmqpNode(Settings(amqp_url=url(broker, principal), group=group, auth="user-id",
                             replica_id=principal, store=str(tmp / f"{principal}.sqlite"),
                             heartbeat_s=0.5), policy=model.POLICY)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def test_forged_and_out_of_role_operations_change_nothing_anywhere(
        broker: RabbitNode, tmp_path: Path) -> None:
    async def run() -> None:
        async with service(broker, tmp_path, "web") as web, \
                service(broker, tmp_path, "logic") as logic, \
                service(broker, tmp_path, "worker.w1") as w1:
            async with web.write() as r:
                model.container(r, "c1").register("name").set("db")
                model.container(r, "c1").register("power_desired").set("on")
            await until(lambda: bool(model.containers(logic.replica)), 20, "logic sees c1")
            async with logic.write() as r:  # one group here holds the cell's records too
                model.name_home(r, "c1", ("main", "w1"))
                model.placement(r, ("main", "w1"), "c1").register("assigned_node").set("w1")
            await until(lambda: model.containers(w1.replica)[0].assigned_node == "w1"
                        if model.containers(w1.replica) else False, 20, "w1 sees placement")
            async with w1.write() as r:
                model.report(r, ("main", "w1"), "c1").register("power_actual").set("on")
            everyone = (web, logic, w1)
            await until(lambda: all(model.containers(n.replica)[0].power_actual == "on"
                                    for n in everyone), 20, "on everywhere")
            before = [n.replica.state() for n in everyone]
            dead = [n.dead_lettered for n in everyone]

            # rogue replicas with worker w2's credentials and no policy: one takes c1
            # over (assigns it to w2 and reports it running there), one turns it off in
            # w1's slot, and one forges w1's replica id
            takeover, meddler = Replica("worker.w2.a"), Replica("worker.w2.b")
            forged = Replica("worker.w1.forged")
            taken = model.placement(takeover, ("main", "w1"), "c1")
            taken.register("assigned_node").set("w2")
            taken.map("workers").map("w2").register("power_actual").set("on")
            for rogue in (meddler, forged):
                model.report(rogue, ("main", "w1"), "c1").register("power_actual").set("off")
            rogue_settings = Settings(amqp_url=url(broker, "worker.w2"), group=GROUP)
            conn = await aio_pika.connect(rogue_settings.amqp_url)
            async with conn:
                ch = await conn.channel(publisher_confirms=True)
                ex = await ch.get_exchange(f"crdt.{GROUP}")
                for body in takeover.outgoing() + meddler.outgoing() + forged.outgoing():
                    await ex.publish(message(rogue_settings, body), routing_key="")
            await until(lambda: all(n.dead_lettered - d == 3
                                    for n, d in zip(everyone, dead, strict=True)),
                        20, "every replica to refuse the three messages")
            assert [n.replica.state() for n in everyone] == before
            assert all(model.containers(n.replica)[0].power_actual == "on"
                       and model.containers(n.replica)[0].assigned_node == "w1" for n in everyone)
            # a replica joining later replays the stream: the user_id proof travels with
            # each message, so it accepts the same messages and refuses the same three
            async with service(broker, tmp_path, "worker.w2") as late:
                assert late.replica.state() == before[0]
                assert late.dead_lettered == 3

    asyncio.run(run())


def test_what_a_full_queue_refuses_reaches_the_stream_for_a_narrow_user(
        broker: RabbitNode, tmp_path: Path) -> None:
    """Web's queue refuses every message (a length limit with ``reject-publish``): the
    broker nacks each message that reaches it, and the writer puts it into the stream once
    more, straight. That went through the default exchange, which a provisioned user may
    not write to (it would reach any queue by name): the channel was closed, a starting
    replica's probe never came back, and nothing of its was confirmed. It goes through the
    exchange into the stream alone (``crdt.G.tolog``), which the users may write to."""
    queue, policy = f"crdt.{REFUSING}.web", "refuse-web"

    async def run() -> None:
        async with service(broker, tmp_path, "web", REFUSING), \
                service(broker, tmp_path, "logic", REFUSING) as logic:
            broker.ctl("set_policy", "--apply-to", "queues", policy,
                       rf"^{queue.replace('.', '[.]')}$",
                       '{"max-length": 0, "overflow": "reject-publish"}')
            try:
                await until(lambda: any(line.split("\t")[:2] == [queue, policy] for line in
                                        broker.ctl("list_queues", "name", "policy",
                                                   "-q").splitlines()),
                            30, f"the policy on {queue}")
                # its probe refused by web's queue as it starts; then its write (a probe
                # that never comes back holds its start for good: bounded here)
                async with asyncio.timeout(60), \
                        service(broker, tmp_path, "worker.w1", REFUSING) as w1:
                    async with w1.write() as r:
                        model.report(r, ("main", "w1"), "c1").register("power_actual").set(
                            "on")
                    await until(lambda: logic.replica.clock.get("worker.w1", 0) > 0, 20,
                                "w1's report at logic")
                    await until(lambda: w1.store.unconfirmed() == [] and w1.refused > 0, 20,
                                "w1's refused messages confirmed by the stream")
            finally:
                broker.ctl("clear_policy", policy)

    asyncio.run(run())
