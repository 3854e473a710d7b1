"""The origin's flow end to end: web, logic and two workers, each its own OS process,
sharing state through a real broker. No service calls another."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import model
from services.runtime import ProcessRuntime
from tests.broker import delete_group, new_group, wait_until
from tools.harness import free_port

#: The cells of the system under test: worker-1 in the first, worker-2 in the second.
CELLS = ("a", "b")


class System:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir, self.group = url, workdir, new_group()
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cells: dict[str, str] = {}  # worker -> its cell (a restart keeps it)
        self.replica_ids: set[str] = set()  # every replica started (its queues to delete)

    def start(self, name: str, *args: str) -> None:
        rid = f"worker.{name}" if args[0] == "worker" else name  # its principal (model.principal)
        self.replica_ids.add(rid)
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *args, "--amqp-url", self.url,
                 "--group", self.group, "--replica-id", rid, "--heartbeat-s", "0.5",
                 "--store", str(self.workdir / f"{name}.sqlite")],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, CRDT_OPS_LOG="INFO"))

    def worker(self, name: str, lease_s: float = 10, cell: str | None = None) -> None:
        cell = self.cells.setdefault(name, cell or model.DEFAULT_CELL)
        self.start(name, "worker", "--node", name, "--capacity", "2", "--lease-s", str(lease_s),
                   "--runtime-dir", str(self.workdir / f"run-{name}"), "--cell", cell)

    def api(self, method: str, path: str, body: Any = None, raw: bytes | None = None
            ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def record(self, cid: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/containers/{cid}")[1])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text()[-2500:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


@pytest.fixture(scope="module")
def system(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(amqp_url, tmp_path_factory.mktemp("system")) as s:
        yield s


@contextlib.contextmanager
def running_system(amqp_url: str, workdir: Path, lease_s: float = 10,
                   worker_cells: tuple[str, str] = (CELLS[0], CELLS[1])) -> Iterator[System]:
    """web, logic and two workers (``lease_s``: their lease), worker-1 in cell
    ``worker_cells[0]`` and worker-2 in ``worker_cells[1]`` (default: a cell each, ``a``
    and ``b``), over ``amqp_url``, in processes of their own; stopped, their groups
    deleted and containers killed after."""
    s = System(amqp_url, workdir)
    s.start("web", "web", "--port", str(s.port), "--cells", ",".join(CELLS))
    s.start("logic", "logic", "--cells", ",".join(CELLS))
    s.worker("worker-1", lease_s, cell=worker_cells[0])
    s.worker("worker-2", lease_s, cell=worker_cells[1])

    def healthy() -> bool:
        try:
            return s.api("GET", "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 60, "web to answer", s.logs)
        yield s
    finally:
        s.stop()
        for group in model.groups(s.group, CELLS):
            delete_group(amqp_url, group, sorted(s.replica_ids))
        for rt in s.workdir.glob("run-*"):
            for pid in ProcessRuntime(rt).running().values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def create(system: System, name: str, owner: str = "alice") -> str:
    status, rec = system.api("POST", "/api/containers", {"name": name, "owner": owner})
    assert status == 201, rec
    assert rec["name"] == name and rec["power_desired"] == "off"
    return str(rec["id"])


def test_create_start_stop_restart(system: System) -> None:
    cid = create(system, "app-1")
    status, rec = system.api("POST", f"/api/containers/{cid}/start")
    assert status == 202 and rec["power_desired"] == "on"
    wait_until(lambda: system.record(cid)["power_actual"] == "on", 30,
               "the container to run", system.logs)
    first = system.record(cid)
    assert first["assigned_node"] in ("worker-1", "worker-2") and alive(first["pid"])

    assert system.api("POST", f"/api/containers/{cid}/restart")[0] == 202
    wait_until(lambda: system.record(cid)["pid"] not in (None, first["pid"])
               and system.record(cid)["power_actual"] == "on", 30, "a new pid", system.logs)
    second = system.record(cid)
    assert alive(second["pid"]) and not alive(first["pid"])

    assert system.api("POST", f"/api/containers/{cid}/stop")[0] == 202
    wait_until(lambda: system.record(cid)["power_actual"] == "off", 30, "the stop",
               system.logs)
    wait_until(lambda: not alive(second["pid"]), 10, "the process to be gone")

    assert system.api("DELETE", f"/api/containers/{cid}")[0] == 202
    assert system.api("GET", f"/api/containers/{cid}")[0] == 404


def test_a_start_logic_rejects_shows_its_reason(system: System) -> None:
    ids = [create(system, f"fill-{i}", owner="bob") for i in range(5)]
    for cid in ids:
        system.api("POST", f"/api/containers/{cid}/start")
    # two workers of capacity 2: one of the five cannot be placed
    wait_until(lambda: sum(system.record(c)["power_actual"] == "on" for c in ids) == 4, 40,
               "four to run", system.logs)
    rejected = [system.record(c) for c in ids if system.record(c)["power_actual"] != "on"]
    assert len(rejected) == 1
    assert "capacity" in (rejected[0]["rejected_reason"] or "")
    # a decision's reason goes as soon as it no longer holds: once the container
    # should not run ...
    waiting = rejected[0]["id"]
    system.api("POST", f"/api/containers/{waiting}/stop")
    wait_until(lambda: system.record(waiting)["rejected_reason"] is None, 20,
               "the reason of a stopped container to go", system.logs)
    system.api("POST", f"/api/containers/{waiting}/start")
    wait_until(lambda: "capacity" in (system.record(waiting)["rejected_reason"] or ""), 20,
               "it to be refused again", system.logs)
    # ... and once it runs: a slot freed, it is placed and runs, without the reason
    freed = next(c for c in ids if c != waiting)
    system.api("POST", f"/api/containers/{freed}/stop")
    wait_until(lambda: system.record(waiting)["power_actual"] == "on", 30, "it to run",
               system.logs)
    assert system.record(waiting)["rejected_reason"] is None
    assert all(system.record(c)["rejected_reason"] is None for c in ids)
    for cid in ids:
        system.api("DELETE", f"/api/containers/{cid}")


@pytest.mark.parametrize("method,path,body,raw,status", [
    ("GET", "/api/containers/nope", None, None, 404),
    ("POST", "/api/containers/nope/start", None, None, 404),
    ("DELETE", "/api/containers/nope", None, None, 404),
    ("POST", "/api/containers", None, b"{not json", 400),
    ("POST", "/api/containers", ["a list"], None, 400),
    ("POST", "/api/containers", {"owner": "x"}, None, 400),
    ("POST", "/api/containers", {"name": ""}, None, 400),
    ("POST", "/api/containers", {"name": 42}, None, 400),
    ("POST", "/api/containers", {"name": "x" * 201}, None, 400),
    ("POST", "/api/containers", {"name": "ok", "owner": "y" * 201}, None, 400),
])
def test_bad_input_is_refused_and_writes_nothing(system: System, method: str, path: str,
                                                 body: Any, raw: bytes | None,
                                                 status: int) -> None:
    before = system.api("GET", "/api/containers")[1]
    got, err = system.api(method, path, body, raw)
    assert got == status and isinstance(err, dict) and err.get("error")
    assert system.api("GET", "/api/containers")[1] == before


def test_a_restarted_worker_reconciles_what_really_runs(system: System) -> None:
    keep, gone = create(system, "keep"), create(system, "gone")
    for cid in (keep, gone):
        system.api("POST", f"/api/containers/{cid}/start")
    wait_until(lambda: all(system.record(c)["power_actual"] == "on" for c in (keep, gone)), 30,
               "both running", system.logs)
    # restart the worker(s) running them
    nodes = {system.record(c)["assigned_node"] for c in (keep, gone)}
    pids = {c: system.record(c)["pid"] for c in (keep, gone)}
    for name in nodes:
        system.procs[name].send_signal(signal.SIGTERM)
        system.procs[name].wait(timeout=30)
    system.api("POST", f"/api/containers/{gone}/stop")  # decided while its worker is down
    for name in nodes:
        system.worker(name)
    wait_until(lambda: system.record(gone)["power_actual"] == "off", 30, "the stop", system.logs)
    wait_until(lambda: not alive(pids[gone]), 10, "the stopped one's process to be gone")
    assert system.record(keep)["pid"] == pids[keep] and alive(pids[keep])  # left running
    for cid in (keep, gone):
        system.api("DELETE", f"/api/containers/{cid}")


def test_each_worker_holds_only_its_own_cell(system: System) -> None:
    """A worker's heartbeats go to its cell's group: web and logic, which hold both cells,
    see both nodes; web and logic read their groups' streams (the services' default:
    services.main.SERVICES_CONSUME) and have no queue; each worker reads a queue of its own
    in its own cell's group (services.main.WORKER_CONSUME), which the broker fills with
    its own node's sub-group and the cell's common part only (bound to the cell's topic
    exchange with those two keys: crdt_ops/transport/topology.py), so neither the
    platform's records nor the other cell's, nor the other nodes' placements, reach it.
    (What each replica consumes is read from its log: RabbitMQ 3.10 lists no stream
    consumers in ``list_consumers``, and its stream consumer counts outlive their channels.)"""
    from tests.broker import rabbitmqctl

    wait_until(lambda: sorted((n["name"], n["cell"]) for n in system.api("GET", "/api/nodes")[1])
               == [("worker-1", "a"), ("worker-2", "b")], 30, "both nodes at web", system.logs)
    g = system.group

    def consumed(service: str) -> set[str]:
        return set(re.findall(r"consuming (crdt\S+)",
                              (system.workdir / f"{service}.log").read_text()))

    bindings = {tuple(line.split("\t")) for line in rabbitmqctl(
        "list_bindings", "source_name", "destination_name", "routing_key", "-q").splitlines()}
    for worker, cell in (("worker-1", "a"), ("worker-2", "b")):
        queue = f"crdt.{g}.cell.{cell}.worker.{worker}"
        assert consumed(worker) == {queue}, consumed(worker)
        assert {(src, key) for src, dst, key in bindings if dst == queue} == {
            ("", queue), (f"crdt.{g}.cell.{cell}.routed", "common"),
            (f"crdt.{g}.cell.{cell}.routed", f"sub.{worker}")}, bindings
    for service in ("web", "logic"):
        assert consumed(service) == {f"crdt.{g}.log", f"crdt.{g}.cell.a.log",
                                     f"crdt.{g}.cell.b.log"}, consumed(service)
    queues = set(rabbitmqctl("list_queues", "name", "-q").split())
    assert not any(q.startswith(f"crdt.{g}.") and q.endswith(("web", "logic"))
                   for q in queues), queues


def test_a_restarted_logic_places_before_the_next_beat(amqp_url: str, tmp_path: Path) -> None:
    """Workers beat every fifth of their lease (12 s under 60 s). Logic restarted just
    after a beat has received nothing of any node yet; it presumes the nodes whose last
    beat is recent by the wall clocks fresh (services/liveness.py), so a Start is placed
    and on long before the next beat, rather than at it."""
    with running_system(amqp_url, tmp_path, lease_s=60) as s:
        def beats() -> dict[str, int]:
            return {n["name"]: n["heartbeat_ms"] for n in s.api("GET", "/api/nodes")[1]}

        wait_until(lambda: len(beats()) == 2 and all(beats().values()), 30, "both nodes",
                   s.logs)
        first = beats()
        wait_until(lambda: beats() != first, 20, "a beat", s.logs)  # one just happened
        s.procs["logic"].send_signal(signal.SIGTERM)
        s.procs["logic"].wait(timeout=30)
        s.start("logic", "logic", "--cells", ",".join(CELLS))
        cid = create(s, "soon")
        assert s.api("POST", f"/api/containers/{cid}/start")[0] == 202
        wait_until(lambda: s.record(cid)["power_actual"] == "on", 8,
                   "on before the workers' next beats (12 s apart)", s.logs)
        s.api("DELETE", f"/api/containers/{cid}")


def test_web_logs_one_line_per_request(system: System) -> None:
    """web's access log: address, method and path, status, bytes and ms, one line each."""
    import re

    cid = create(system, "logged")
    line = re.compile(r'127\.0\.0\.1 "GET /api/containers/' + cid + r'\?x=1" 400 \d+ B [\d.]+ ms')
    assert system.api("GET", f"/api/containers/{cid}?x=1")[0] == 400  # a parameter it refuses
    wait_until(lambda: line.search((system.workdir / "web.log").read_text()) is not None, 10,
               "web's access line", system.logs)
    system.api("DELETE", f"/api/containers/{cid}")
