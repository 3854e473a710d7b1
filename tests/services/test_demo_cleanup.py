"""The demo over RabbitMQ: what it prints and when, which replica settings it takes,
and what it leaves on the broker (nothing of its own group; no broker user, no
password that still logs in). Real OS processes against the real broker. (The
settings it refuses: tests/services/test_cli_input.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import aio_pika
import pytest

from tests.broker import rabbitmqctl
from tools.harness import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO_USERS = ("web", "logic", "worker.worker-1", "worker.worker-2")


class Demo:
    """``crdt-ops demo`` (or ``command``) as a process in a session of its own."""

    def __init__(self, args: list[str], command: list[str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_OPS_")}
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "services.cli", "demo"]), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        self.lines: list[str] = []

    def line(self, timeout: float = 90) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # (the demo prints a line within seconds)
        self.lines.append(line)
        return line

    def until(self, text: str) -> str:
        while True:
            line = self.line()
            assert line, f"the demo ended without saying {text!r}:\n{''.join(self.lines)}"
            if text in line:
                return line

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        self.lines.append(out)
        return self.proc.returncode, "".join(self.lines)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for d in started:
        d.kill()


def broker_objects(group: str) -> list[str]:
    """The queues and exchanges named crdt.<group> or crdt.<group>.* on the broker."""
    pattern = re.compile(rf"^crdt\.{re.escape(group)}(\..*)?$")
    names = rabbitmqctl("list_queues", "name", "-q").split() + \
        rabbitmqctl("list_exchanges", "name", "-q").split()
    return [n for n in names if pattern.match(n)]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def logs_in(url: str) -> bool:
    async def attempt() -> None:
        conn = await aio_pika.connect(url, timeout=10)
        await conn.close()

    try:
        asyncio.run(attempt())
        return True
    except aio_pika.exceptions.AMQPConnectionError:  # ProbableAuthenticationError
        return False


def test_demo_takes_replica_settings_prints_its_url_once_it_serves_and_cleans_up(
        amqp_url: str, demos: list[Demo]) -> None:
    port = free_port()
    # --consume queue: the services' queues show that --queue-type reached each of them
    demo = Demo(["--amqp-url", amqp_url, "--port", str(port), "--queue-type", "quorum",
                 "--batch-ops", "7", "--consume", "queue"])
    demos.append(demo)
    first = demo.line()
    group = re.search(r"group (demo-[0-9a-f]{6})", first)
    assert group, first
    group_name = group.group(1)
    url = demo.until("open http").split()[1]
    assert url == f"http://127.0.0.1:{port}/"
    # the URL is printed once the page answers: no retry needed
    assert "<h1>Containers</h1>" in urllib.request.urlopen(url, timeout=5).read().decode()
    # --queue-type and --batch-ops reached every service
    services = demo.children()
    assert len(services) == 4
    for pid in services:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[cmd.index(b"--batch-ops"):][:2] == [b"--batch-ops", b"7"]
        assert cmd[cmd.index(b"--consume"):][:2] == [b"--consume", b"queue"]
        assert b"--amqp-url" not in cmd  # (a URL may hold a password: the environment)
    def queue_types() -> dict[str, str]:
        return dict(line.split("\t") for line in rabbitmqctl(
            "list_queues", "name", "type", "-q").splitlines()[1:] if "\t" in line)

    # the URL comes once web serves; a worker may still be declaring its cell's queue then
    wanted = {f"crdt.{group_name}.cell.main.{user}" for user in DEMO_USERS}
    wait_until(lambda: wanted <= set(queue_types()), 20, "every replica's queue declared",
               lambda: str(sorted(queue_types())))
    types = queue_types()
    for user in DEMO_USERS:  # web and logic hold the platform's group, workers their cell's
        group = group_name if user in ("web", "logic") else f"{group_name}.cell.main"
        assert types[f"crdt.{group}.{user}"] == "quorum"
        assert f"crdt.{group_name}.cell.main.{user}" in types
    # 4 exchanges and 3 shared queues per group, the cell's topic exchange (it has
    # sub-groups: crdt_ops/transport/topology.py), and a queue per replica held: the
    # platform's group has web's and logic's, its cell's all four; and as many holder
    # queues (crdt_ops/transport/amqp/holder.py), while the services run, and in the
    # platform's group the two workers' principals' (one worker per node at a time: the
    # demo's logic is replica "logic", whose own holder queue is its principal's)
    assert len(broker_objects(group_name)) == 2 * 7 + 1 + (2 + 4) * 2 + 2
    logs = Path(re.search(r"logs in (\S+);", "".join(demo.lines)).group(1))  # type: ignore[union-attr]
    assert logs.is_dir()

    code, out = demo.stop(signal.SIGINT)
    assert code == 0, out
    assert "Traceback" not in out
    assert out.rstrip().endswith("stopped")
    assert (f"cleaned up: groups {group_name} and {group_name}.cell.main deleted (their "
            f"queues, streams and exchanges); "
            f"{logs} removed") in out, out
    assert broker_objects(group_name) == []
    assert not logs.exists()
    for pid in services:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z"


def test_run_local_leaves_no_user_nor_password_that_logs_in(amqp_url: str,
                                                             demos: list[Demo]) -> None:
    """scripts/run-local (demo --secure): random passwords per run, never the known
    ones; after SIGTERM the users are gone and the passwords no longer log in."""
    existing = set(rabbitmqctl("list_users", "-q").split())
    if existing & set(DEMO_USERS):
        pytest.fail(f"broker users {existing & set(DEMO_USERS)} exist already")
    host = urlparse(amqp_url).netloc.rsplit("@", 1)[-1]
    demo = Demo(["--amqp-url", amqp_url, "--port", str(free_port())],
                command=[str(ROOT / "scripts" / "run-local")])
    demos.append(demo)
    group_name = re.search(r"group (demo-[0-9a-f]{6})", demo.line()).group(1)  # type: ignore[union-attr]
    demo.until("open http")
    urls = {}
    for pid in demo.children():
        url = environ(pid)["CRDT_OPS_AMQP_URL"]
        urls[unquote(urlparse(url).username or "")] = url
    assert set(urls) == set(DEMO_USERS)
    for user, url in urls.items():
        assert unquote(urlparse(url).password or "") != f"{user}-demo-password"
        assert logs_in(url), user
        assert not logs_in(f"amqp://{user}:{user}-demo-password@{host}/")

    code, out = demo.stop(signal.SIGTERM)
    assert code == 0, out
    assert "Traceback" not in out
    assert set(rabbitmqctl("list_users", "-q").split()) & set(DEMO_USERS) == set()
    for user, url in urls.items():
        assert not logs_in(url), f"{user}'s password of the run still logs in"
    assert broker_objects(group_name) == []


def test_demo_refuses_a_login_the_broker_refuses_before_starting_anything(
        amqp_url: str, tmp_path: Path) -> None:
    """A wrong password: the demo used to print "using RabbitMQ", start its services (each
    retrying the login in its own log) and wait for its page for ever, saying nothing. It
    says what failed, and why, at once: no group, no service, no directory."""
    u = urlparse(amqp_url)
    wrong = u._replace(netloc=f"{u.username}:not-the-password@{u.hostname}:{u.port or 5672}")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", "demo", "--amqp-url",
                           wrong.geturl(), "--port", str(free_port())], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert time.monotonic() - start < 15
    assert done.returncode == 2 and done.stdout == "", done
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("crdt-ops demo: error: something answers at amqp://")
    assert "ACCESS_REFUSED" in line and "check the user and password in the URL" in line
    assert "not-the-password" not in line
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_a_taken_port_before_starting_anything(amqp_url: str) -> None:
    """Another server on the port: the demo says which port is taken and exits non-zero
    at once: no group, no service, no URL of the other server."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for url in (amqp_url, "amqp://guest:guest@127.0.0.1:1/"):  # RabbitMQ; in memory
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "services.cli", "demo", "--amqp-url",
                                   url, "--port", str(port)], capture_output=True, text=True,
                                  timeout=60)
            assert time.monotonic() - start < 10
            assert done.returncode != 0
            assert done.stdout == ""  # no "using RabbitMQ" (no group), no URL
            assert done.stderr.strip().splitlines() == [
                f"crdt-ops demo: error: port {port} on 127.0.0.1 is taken (another server "
                "listens there): choose another with --port"]
    finally:
        server.shutdown()
        server.server_close()


def test_demo_in_memory_says_rabbitmq_settings_do_not_apply(
        demos: list[Demo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the demo makes its directory
    demo = Demo(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "--port", str(free_port()),
                 "--queue-type", "quorum"])
    demos.append(demo)
    first = demo.line()
    assert "in-memory network" in first
    assert "no broker answers at amqp://guest:***@127.0.0.1:1/" in first  # the URL it tried
    assert "--queue-type" in first and "not used" in first
    demo.until("open http")
    assert [p.name[:14] for p in tmp_path.iterdir()] == ["crdt-ops-demo-"]
    code, out = demo.stop(signal.SIGTERM)
    assert code == 0, out
    assert "Traceback" not in out
    # its directory is gone, and no worker's guard made it again
    assert list(tmp_path.iterdir()) == []
