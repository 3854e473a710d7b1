"""The printed origin story (crdt-ops story) runs and converges, as a real OS process."""

from __future__ import annotations

import subprocess
import sys


def test_story_command_converges() -> None:
    out = subprocess.run([sys.executable, "-m", "crdt_ops.cli", "story"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "in-memory network" in out.splitlines()[0]
    assert "actual=on" in out
    assert out.strip().splitlines()[-1].startswith("converged=true")


def _serve_then_interrupt(args: list[str], first_line: str) -> None:
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "crdt_ops.cli", "demo", "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert first_line in proc.stdout.readline()
        page = ""
        for _ in range(150):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read(
                ).decode()
                break
            except OSError:
                time.sleep(0.2)
        assert "<h1>Containers</h1>" in page
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_without_a_broker_serves_its_page_and_stops_on_ctrl_c() -> None:
    _serve_then_interrupt(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
                          "using the in-memory network")


def test_demo_with_the_broker_serves_its_page_and_stops_on_ctrl_c(amqp_url: str) -> None:
    _serve_then_interrupt(["--amqp-url", amqp_url], "using RabbitMQ")
