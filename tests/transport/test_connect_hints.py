"""A connection the broker refuses: the warning of each attempt says what it most often
means (``crdt_ops.transport.amqp.connection.CONNECT_HINTS``), against the real broker."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import aio_pika
import pytest
from yarl import URL

from crdt_ops.transport.amqp.connection import retrying


def _closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens (bound for a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("wrong", "says"), [
    (lambda url: url.with_path("/no-such-vhost-crdt-ops-test"),
     "the URL's virtual host does not exist"),
    (lambda url: url.with_password("not-the-password"), "check the user and password in the URL"),
    (lambda url: url.with_port(_closed_port()), "nothing listens there: is RabbitMQ running"),
])
@pytest.mark.asyncio
async def test_a_refused_connection_names_its_likely_cause(
        amqp_url: str, caplog: pytest.LogCaptureFixture, wrong: Callable[[URL], URL],
        says: str) -> None:
    url = str(wrong(URL(amqp_url)))
    caplog.set_level(logging.WARNING, "crdt_ops.transport.amqp.connection")
    attempts = 0
    async for attempt in retrying("connect", url):
        with attempt:
            attempts += 1
            if attempts > 2:  # two refusals logged: enough
                break
            await aio_pika.connect(url, timeout=5)
    lines = [r.getMessage() for r in caplog.records
             if r.name == "crdt_ops.transport.amqp.connection"]
    assert len(lines) >= 2, lines
    assert all(says in line and "not-the-password" not in line for line in lines[:2]), lines
    assert all("***" in line for line in lines[:2]), lines  # the password hidden
