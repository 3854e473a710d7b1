"""A connection the broker refuses: the warning of each attempt says what it most often
means (``crdt_ops.transport.amqp.connection.CONNECT_HINTS``), against the real broker."""

from __future__ import annotations

import logging

import aio_pika
import pytest
from yarl import URL

from crdt_ops.transport.amqp.connection import retrying


@pytest.mark.asyncio
async def test_a_virtual_host_that_does_not_exist_is_named_as_the_likely_cause(
        amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = str(URL(amqp_url).with_path("/no-such-vhost-crdt-ops-test"))
    caplog.set_level(logging.WARNING, "crdt_ops.transport.amqp.connection")
    attempts = 0
    async for attempt in retrying("connect", url):
        with attempt:
            attempts += 1
            if attempts > 2:  # two refusals logged: enough
                break
            await aio_pika.connect(url, timeout=5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 2, lines
    assert all("the URL's virtual host does not exist" in line and "***" in line
               for line in lines[:2]), lines


@pytest.mark.asyncio
async def test_a_wrong_password_is_named_as_the_likely_cause(
        amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = str(URL(amqp_url).with_password("not-the-password"))
    caplog.set_level(logging.WARNING, "crdt_ops.transport.amqp.connection")
    attempts = 0
    async for attempt in retrying("connect", url):
        with attempt:
            attempts += 1
            if attempts > 1:
                break
            await aio_pika.connect(url, timeout=5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and "check the user and password in the URL" in lines[0], lines
    assert "not-the-password" not in lines[0]
