"""A lost broker connection is a few clear lines in a replica's log, not pages of
tracebacks: "lost its connection", aio-pika's failed attempts once, "reconnected".

The replica (a real ``crdt-ops replica`` process) reaches the real broker through a
TCP proxy in this test, so that a broker outage can be played without touching the
shared broker: the proxy drops every connection and refuses new ones for a few
seconds (as a restarting broker does), then forwards again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import ReplicaProcess, wait_until
from tools.harness import Proxy, delete_group


@pytest.fixture
def group(amqp_url: str) -> Iterator[str]:
    """A new group; afterwards its replicas r1, r2 and every queue and exchange deleted."""
    group = f"test-rc-{uuid.uuid4().hex[:8]}"
    yield group
    delete_group(amqp_url, group, ["r1", "r2"])


@pytest.fixture
def replicas() -> Iterator[list[ReplicaProcess]]:
    started: list[ReplicaProcess] = []
    yield started
    for r in started:
        r.stop()


def test_a_broker_outage_is_a_few_lines_without_tracebacks(
        group: str, replicas: list[ReplicaProcess], amqp_url: str, tmp_path: Path) -> None:
    proxy = Proxy(amqp_url)
    url = proxy.url
    r = ReplicaProcess(url, group, "r1", tmp_path, ops=0, per_write=1)
    r.log_level = "INFO"
    replicas.append(r)
    r.start()
    wait_until(lambda: "founded group" in r.tail(), 60, "the replica to found its group",
               r.tail)
    before = len(r.tail(100_000).splitlines())
    proxy.down()
    time.sleep(5)  # the broker is away: reconnects are refused
    proxy.up()
    wait_until(lambda: "reconnected to the broker" in r.tail(), 30, "the reconnect", r.tail)
    time.sleep(2)  # what follows the reconnect (topology declared again, stream re-read)
    r.stop()
    log = r.tail(100_000)
    event = log.splitlines()[before:]
    assert "Traceback" not in log, log
    assert any("lost its connection to the broker" in line for line in event), log
    assert sum("reconnected to the broker" in line for line in event) == 1, log
    # a stop is no loss: its consumer is cancelled, not "gone" (once, with the link)
    assert sum("is gone" in line for line in event) <= 1, log
    # lost, the consumer gone, aio-pika's attempt, at most a few of the replica's loops,
    # reconnected, consuming, the stream re-read (2 lines), the worst stall, stopped: a
    # bounded handful (it was ~110 lines)
    assert len(event) <= 12, "\n".join(event)
    print("\n".join(event))
    assert r.returncode == 0


def test_debug_keeps_the_tracebacks(group: str, replicas: list[ReplicaProcess],
                                    amqp_url: str, tmp_path: Path) -> None:
    """CRDT_OPS_LOG=DEBUG: everything, the libraries' tracebacks included."""
    proxy = Proxy(amqp_url)
    url = proxy.url
    r = ReplicaProcess(url, group, "r2", tmp_path, ops=0)
    r.log_level = "DEBUG"
    replicas.append(r)
    r.start()
    wait_until(lambda: "founded group" in r.tail(10_000_000), 60, "the replica to found its group",
               r.tail)
    proxy.down()
    time.sleep(2)
    proxy.up()
    wait_until(lambda: "reconnected to the broker" in r.tail(10_000_000), 30, "the reconnect",
               r.tail)
    r.stop()
    log = r.tail(10_000_000)
    assert "Traceback" in log
