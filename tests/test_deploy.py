"""The broker users docker-compose.yml provisions (deploy/make_definitions.py) work on a
real RabbitMQ: each service logs in with its own user and reaches only its group."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import aiormq
import pytest

from deploy.make_definitions import USERS, definitions
from tests.broker import rabbitmqctl


def test_service_users_reach_their_group_and_nothing_else(amqp_url: str) -> None:
    group = f"test-{uuid.uuid4().hex[:8]}"
    suffix = uuid.uuid4().hex[:6]
    defs = definitions(group)
    for entry in [*defs["users"], *defs["permissions"]]:  # type: ignore[misc]
        key = "name" if "name" in entry else "user"
        entry[key] = f"{entry[key]}-{suffix}"
    rabbitmqctl("import_definitions", stdin=json.dumps(defs))
    host = amqp_url.split("@", 1)[1]

    async def check() -> None:
        conn = await aio_pika.connect(f"amqp://web-{suffix}:{USERS['web']}@{host}")
        async with conn:
            ch = await conn.channel()
            await ch.declare_exchange(f"crdt.{group}", aio_pika.ExchangeType.FANOUT, durable=True)
            q = await ch.declare_queue(f"crdt.{group}.web", durable=True)
            await q.bind(f"crdt.{group}")
            await q.delete()
            await ch.exchange_delete(f"crdt.{group}")
            ch2 = await conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await ch2.declare_exchange("crdt.another-group", aio_pika.ExchangeType.FANOUT)
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(f"amqp://web-{suffix}:wrong-password@{host}")

    try:
        asyncio.run(check())
    finally:
        for user in USERS:
            rabbitmqctl("delete_user", f"{user}-{suffix}")
