"""The publisher keeps several rounds in flight: a write goes out while an earlier round
still awaits the broker's confirms, and ``confirmed_through`` never claims a write whose
round is unconfirmed. Over the real broker; one round's confirm is held back by wrapping
the publisher's ``publish`` (its message reaches the broker and the other replica, only
the awaiting of its confirm is held)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from crdt_ops.transport.amqp import AmqpNode
from crdt_ops.transport.amqp.publisher import ROUNDS_IN_FLIGHT
from crdt_ops.transport.config import Settings
from tests.broker import new_group, started, until
from tools.bench.broker import delete_group_async


def hold_next_confirm(node: AmqpNode) -> asyncio.Event:
    """Hold the confirm of ``node``'s next published message until the returned event is
    set (later messages go through as usual)."""
    gate = asyncio.Event()
    publish: Callable[[bytes], Awaitable[None]] = node._out.publish
    held = False

    async def holding(body: bytes) -> None:
        nonlocal held
        first, held = not held, True
        await publish(body)
        if first:
            await gate.wait()

    node._out.publish = holding  # type: ignore[method-assign]
    return gate


async def _set(node: AmqpNode, key: str, value: int) -> float:
    async with node.write() as r:
        r.register(key).set(value)
    return time.monotonic()


@pytest.mark.asyncio
async def test_a_write_goes_out_while_an_earlier_round_awaits_its_confirms(
        amqp_url: str, tmp_path: Path) -> None:
    group = new_group()
    s = Settings(amqp_url=amqp_url, group=group, heartbeat_s=30.0, store=str(tmp_path))
    try:
        async with started(s, "a", "b") as (a, b):
            await _set(a, "warm", 1)
            await until(lambda: b.replica.get("warm") == 1 and not a.durable.store.unconfirmed()
                        and not a._out._rounds, 10, "the warm-up write at b, and confirmed")
            gate = hold_next_confirm(a)
            first = await _set(a, "x", 1)
            await until(lambda: b.replica.get("x") == 1, 10, "the first write at b")
            await _set(a, "y", 2)
            # the first round still awaits its confirm; the second went out all the same
            await until(lambda: b.replica.get("y") == 2, 10, "the second write at b")
            await until(lambda: len(a._out._rounds) == 1, 10, "the second round's confirm")
            assert not gate.is_set()
            # the second round is confirmed, the first is not: nothing is claimed for it
            assert a.confirmed_through() < first
            gate.set()
            await until(lambda: a.confirmed_through() >= first, 10,
                        "confirmed_through past the first write once its round ends")
            assert not a.durable.store.unconfirmed()
            assert REGISTRY.get_sample_value("crdt_ops_outbox_messages",
                                             {"replica": "a", "group": group}) == 0
    finally:
        await delete_group_async(amqp_url, group, ["a", "b"], lambda _: None)


@pytest.mark.asyncio
async def test_rounds_in_flight_are_bounded_and_what_waits_goes_out_joined(
        amqp_url: str, tmp_path: Path) -> None:
    """With ROUNDS_IN_FLIGHT rounds awaiting their confirms, what is written meanwhile
    waits for one of them to end, then goes out in one round (joined), and nothing is lost."""
    group = new_group()
    s = Settings(amqp_url=amqp_url, group=group, heartbeat_s=30.0, store=str(tmp_path))
    try:
        async with started(s, "a", "b") as (a, b):
            await _set(a, "warm", 1)
            await until(lambda: not a.durable.store.unconfirmed() and not a._out._rounds, 10,
                        "a's warm-up write confirmed")
            gates = []
            for i in range(ROUNDS_IN_FLIGHT):
                gates.append(hold_next_confirm(a))
                await _set(a, f"k{i}", i)
                await until(lambda n=i + 1: len(a._out._rounds) == n, 10, f"round {i + 1}")
            sent: list[bytes] = []
            publish = a._out.publish

            async def counted(body: bytes) -> None:
                sent.append(body)
                await publish(body)

            a._out.publish = counted  # type: ignore[method-assign]
            for i in range(5):  # none of these can go out yet
                await _set(a, "later", i)
            await asyncio.sleep(0.5)
            assert b.replica.get("later") is None and not sent
            assert len(a.durable.store.unconfirmed()) == ROUNDS_IN_FLIGHT + 5
            gates[0].set()
            await until(lambda: b.replica.get("later") == 4, 10, "the later writes at b")
            assert len(sent) == 1  # the five rows that waited, joined into one message
            for g in gates:
                g.set()
            await until(lambda: not a.durable.store.unconfirmed(), 10, "every row confirmed")
            assert all(b.replica.get(f"k{i}") == i for i in range(ROUNDS_IN_FLIGHT))
    finally:
        await delete_group_async(amqp_url, group, ["a", "b"], lambda _: None)


@pytest.mark.asyncio
async def test_what_a_peer_asked_for_again_goes_out_while_a_later_round_awaits_its_confirms(
        amqp_url: str, tmp_path: Path) -> None:
    """The publisher fetched only rows above those in flight: rows made unconfirmed again
    for a peer (lower ids) waited until no round was in flight, which under steady writes
    with slow confirms was never, and the peer's gap stayed open."""
    group = new_group()
    s = Settings(amqp_url=amqp_url, group=group, heartbeat_s=30.0, store=str(tmp_path))
    try:
        async with started(s, "a", "b") as (a, _b):
            store = a.durable.store
            for i in range(3):
                await _set(a, f"k{i}", i)
            await until(lambda: not store.unconfirmed() and not a._out._rounds, 10,
                        "the first writes confirmed")
            gate = hold_next_confirm(a)
            await _set(a, "held", 1)  # its round awaits its confirm
            await until(lambda: len(a._out._rounds) == 1, 10, "the held round in flight")
            kept = store.kept()
            assert store.resend({a.replica_id: (1, 3)}) >= 1
            a.durable.outbox_ready.set()
            await until(lambda: store.kept() == kept and len(store.unconfirmed()) == 1, 10,
                        "the messages asked for again published and confirmed")
            assert not gate.is_set() and len(a._out._rounds) == 1
            gate.set()
            await until(lambda: not store.unconfirmed(), 10, "the held round confirmed")
    finally:
        await delete_group_async(amqp_url, group, ["a", "b"], lambda _: None)
