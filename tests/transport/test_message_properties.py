"""The properties the publisher gives each operation it publishes (built for aiormq
directly) are those of :func:`crdt_ops.transport.auth.message`, which the other
publishes use; and the publisher's rounds keep ``asyncio.gather``'s outcomes while a
lone send runs in the round's own task."""

from __future__ import annotations

import asyncio

import pytest

from crdt_ops.transport.amqp.publisher import _outcomes
from crdt_ops.transport.auth import message, properties
from crdt_ops.transport.config import Settings
from crdt_ops.transport.signing import Signer

#: What RabbitMQ and the receivers read; aio-pika also sends an empty header table and a
#: priority of 0 where the publisher sends neither (the same to a queue without priorities).
FIELDS = ("delivery_mode", "message_id", "message_type", "user_id", "app_id",
          "content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
          "timestamp")


@pytest.mark.parametrize("signed", [False, True])
def test_the_publishers_properties_are_those_of_every_message(signed: bool) -> None:
    signer = Signer.generate("web") if signed else None
    settings = Settings(amqp_url="amqp://web-user:secret@127.0.0.1:5672/")
    body = b"an envelope's bytes"
    slow = message(settings, body, signer, message_id="m-7").properties
    fast = properties(settings, body, signer, "m-7")
    assert [int(getattr(fast, f)) if f == "delivery_mode" else getattr(fast, f)
            for f in FIELDS] == [int(getattr(slow, f)) if f == "delivery_mode"
                                 else getattr(slow, f) for f in FIELDS]
    assert int(fast.delivery_mode) == 2 and fast.user_id == "web-user"
    assert (fast.headers or {}) == (slow.headers or {})
    assert bool(fast.headers) is signed


def test_a_round_gets_each_sends_outcome_and_a_lone_send_runs_in_its_task() -> None:
    async def main() -> None:
        tasks: list[asyncio.Task[object] | None] = []

        async def ok() -> None:
            tasks.append(asyncio.current_task())

        async def fails() -> None:
            raise ConnectionError("channel closed")

        me = asyncio.current_task()
        assert await _outcomes([ok()]) == [None]
        assert tasks == [me]  # no task of its own
        [lone] = await _outcomes([fails()])
        assert isinstance(lone, ConnectionError)
        outs = await _outcomes([ok(), fails(), ok()])
        assert outs[0] is None and isinstance(outs[1], ConnectionError) and outs[2] is None
        assert len(tasks) == 3 and me not in tasks[1:]  # several: each in a task of its own

    asyncio.run(main())
