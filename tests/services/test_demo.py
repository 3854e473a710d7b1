"""The printed origin story (crdt-ops story) runs and converges, as a real OS process."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.broker import rabbitmqctl


def test_story_command_converges() -> None:
    out = subprocess.run([sys.executable, "-m", "services.cli", "story"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "in-memory network" in out.splitlines()[0]
    assert out.startswith("crdt-ops story: ")  # not the demo's name
    assert "actual=on" in out
    assert out.strip().splitlines()[-1].startswith("converged=true")


def _serve_then_interrupt(args: list[str], first_line: str,
                           command: list[str] | None = None,
                           check: Callable[[int], None] | None = None) -> None:
    """Start the demo (or ``command``, given ``--port``), wait for its page, run
    ``check(port)``, then Ctrl-C it: it must stop cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = command or [sys.executable, "-m", "services.cli", "demo"]
    proc = subprocess.Popen([*command, "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
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
        if check is not None:
            check(port)
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


def _api(port: int, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as answer:
        return json.loads(answer.read())


def test_run_local_runs_each_service_as_its_own_broker_user(amqp_url: str) -> None:
    """scripts/run-local, as docker-compose runs the services: provisioned users, --auth
    user-id; a container created and started through the API runs."""
    def start_a_container(port: int) -> None:
        cid = _api(port, "POST", "/api/containers", {"name": "db", "owner": "ann"})["id"]
        _api(port, "POST", f"/api/containers/{cid}/start")
        for _ in range(150):
            if _api(port, "GET", f"/api/containers/{cid}")["power_actual"] == "on":
                break
            time.sleep(0.2)
        assert _api(port, "GET", f"/api/containers/{cid}")["power_actual"] == "on"
        users = set(rabbitmqctl("list_connections", "user", "-q").split())
        assert {"web", "logic", "worker.worker-1", "worker.worker-2"} <= users
        _api(port, "POST", f"/api/containers/{cid}/stop")

    script = Path(__file__).resolve().parents[2] / "scripts" / "run-local"
    try:
        _serve_then_interrupt(["--amqp-url", amqp_url], "a broker user per service",
                              command=[str(script)], check=start_a_container)
    finally:  # the demo's users have known passwords: leave none behind
        for user in ("web", "logic", "worker.worker-1", "worker.worker-2"):
            with contextlib.suppress(RuntimeError):
                rabbitmqctl("delete_user", user)
