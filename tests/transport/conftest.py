"""Fixtures of the transport tests: for those that restart a broker, a throwaway RabbitMQ
node (tools.rabbitnode) and replicas that reconnect every 20 ms instead of every second;
for those of the store side alone, a durable replica with no broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdt_ops.transport.amqp.connection import FailoverConnection
from crdt_ops.transport.config import Settings
from crdt_ops.transport.durable import DurableReplica
from tools.rabbitnode import RabbitNode


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the test's own, started; destroyed afterwards."""
    node = RabbitNode(f"crdt-t-{uuid.uuid4().hex[:6]}", tmp_path / "node")
    node.start()
    try:
        yield node
    finally:
        node.destroy()


@pytest.fixture
def fast_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``FailoverConnection.open`` reconnects every 20 ms, not every second: the
    windows around a reconnection come up often."""
    opened = FailoverConnection.open

    async def open_fast(urls: list[str], start: int = 0, timeout: float = 10,
                        reconnect_interval: float = 1, **kwargs: Any) -> FailoverConnection:
        return await opened(urls, start, timeout=timeout, reconnect_interval=0.02, **kwargs)

    monkeypatch.setattr(FailoverConnection, "open", open_fast)


@pytest.fixture
def offline_durable(tmp_path: Path) -> DurableReplica:
    """Replica ``r`` of group ``g`` with its store at ``tmp_path/r.sqlite``, opened with no
    broker (its settings name a port nothing listens on): what it holds, logs and restores
    is driven by the test."""
    return DurableReplica.open(Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", group="g",
                                        replica_id="r", store=str(tmp_path / "r.sqlite")))
