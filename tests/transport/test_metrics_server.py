"""The metrics endpoint's thread: it serves scrapes, and sleeps between them."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from crdt_ops.transport import metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wakeups(native_id: int) -> int:
    """Voluntary context switches of thread ``native_id`` of this process (Linux)."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("voluntary_ctxt_switches")))


def test_the_metrics_thread_serves_scrapes_and_does_not_wake_between_them() -> None:
    port = _free_port()
    thread = metrics.serve(port)
    assert thread is not None and thread.daemon and thread.native_id is not None
    metrics.OPS_APPLIED.labels("metrics-test", "g").inc(3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'crdt_ops_operations_applied_total{group="g",replica="metrics-test"} 3.0' in text
    time.sleep(0.2)  # the scrape's own wake-ups are over
    before = _wakeups(thread.native_id)
    time.sleep(1.6)  # polling every 0.5 s would wake it 3 times
    assert _wakeups(thread.native_id) - before == 0


def test_no_port_serves_nothing() -> None:
    assert metrics.serve(0) is None


def test_the_metrics_port_listens_on_the_address_given(caplog: pytest.LogCaptureFixture) -> None:
    """``--metrics-host 127.0.0.1``: this machine only; the log line names the address."""
    import logging

    caplog.set_level(logging.INFO, "crdt_ops.transport.metrics")
    port = _free_port()
    assert metrics.serve(port, "127.0.0.1") is not None
    assert f"metrics on http://127.0.0.1:{port}/metrics" in caplog.text
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"]  # LISTEN: local address:port in hex
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1, not 0.0.0.0
    assert f"00000000:{port:04X}" not in listening

