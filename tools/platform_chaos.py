"""``crdt-ops platform-chaos``: the services under faults, checked against what runs.

The platform's promise to a customer is that a container it was told to run runs, once,
and never as two copies at a time (services/README.md, "What the platform guarantees").
``crdt-ops chaos`` audits the library's operations; this run audits the services built on
it. Over a RabbitMQ node of its own (:class:`~tools.rabbitnode.RabbitNode`), it runs web,
two logics (one placing, one a standby) and three workers (two in cell ``a``, one in cell
``b``), each an OS process supervised the way systemd's ``Restart=always`` would: one that
exits for any reason (killed, or exiting 1 because it was deposed) is started again a
second later, on its store and runtime directory. Containers are local processes
(``--runtime process``). Meanwhile:

- a client acts through web's HTTP API every ``--action-interval-s``: Start, Stop or
  Restart of a random container (an action web refuses, say while it is down, is passed
  over; one it accepted with 202 counts);
- every ``--fault-interval-s`` a fault, the kinds in a seeded random order, each once per
  round: a worker SIGKILLed; a worker SIGSTOPped, or cut off from the broker, past its
  lease (its containers move); a node crashed (its worker, its guard and its containers
  SIGKILLed, the worker started again only after its lease); the placing logic SIGKILLed
  (the standby takes over); the placing logic SIGSTOPped past the AMQP heartbeat timeout
  (the standby takes over while it is frozen: woken, it is deposed), or cut off as long
  (the standby takes over at once);
  web SIGKILLed; a service's connection closed by the broker; the broker restarted
  (``stop_app``/``start_app``) and SIGKILLed. Each logic and worker reaches the broker
  through a TCP proxy of its own (:class:`~tools.harness.Proxy`): a cut drops its
  connections and refuses new ones;
- a thread reads, every 20 ms, every process of the machine whose environment names a
  container of the run (:data:`services.runtime.CONTAINER_ENV`): two at once of one
  container is a *double*.

Then every process is let go, and the run waits (``--timeout``) until every service runs
and, for each container, what web shows and what runs agree with the last action accepted:
Start or Restart, one copy, on the node its record names, ``power_actual`` on; Stop, no
copy, off. The last line:

``actions=N faults=F doubled=D converged=true|false seconds=S``

(S: from the end of the faults to agreement, which must then hold for two leases and 5 s
more, the watch still reading; a logic must hold the principal's queue). An exit that no
fault explains (not a SIGKILL, not a deposition's status 1) is printed. Exit status 0 only
when nothing was doubled, everything agreed, and every exit was explained. Needs root and
Debian's ``rabbitmq-server`` (as ``crdt-ops chaos``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.guard import running_guard
from services.main import stop_containers
from services.pids import alive
from services.runtime import CONTAINER_ENV, RUNTIME_ENV
from tools.harness import Proxy, free_port, new_group
from tools.rabbitnode import RabbitNode

T = TypeVar("T")

#: The cells and their workers: two nodes in one (a move within a cell), one in the other
#: (its containers move to the other cell when it is gone).
WORKERS = {"worker-1": "a", "worker-2": "a", "worker-3": "b"}
CELLS = ("a", "b")
#: The logics: one places, the other waits as its standby (services/README.md, "One logic").
LOGICS = ("logic.a", "logic.b")
#: Seconds before a process that exited is started again (systemd's ``RestartSec``).
RESTART_S = 1.0
#: The broker's heartbeat timeout the services ask for (seconds; the URL's ``heartbeat``):
#: how long a frozen logic keeps its holder queue.
AMQP_HEARTBEAT_S = 4
#: The kinds of fault, each once per round, in a seeded random order.
FAULTS = ("worker-kill", "worker-pause", "worker-cut", "node-crash", "logic-kill",
          "logic-pause", "logic-cut", "web-kill", "connection-close", "broker-restart",
          "broker-kill")
#: How often the copies of every container are read (seconds).
SAMPLE_S = 0.02


def copies(cids: Iterable[str]) -> dict[str, dict[int, str]]:
    """Every live process (not a zombie) of this machine whose environment names one of
    ``cids`` in :data:`CONTAINER_ENV`: container -> {pid: the runtime directory it names}.
    Only ``sleep`` processes are read whole (what ProcessRuntime runs by default)."""
    wanted = {f"{CONTAINER_ENV}={cid}".encode(): cid for cid in cids}
    found: dict[str, dict[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_bytes().strip() != b"sleep":
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        cid = next((wanted[v] for v in env if v in wanted), None)
        if cid is None or not alive(int(entry)):
            continue
        root = next((v.split(b"=", 1)[1].decode() for v in env
                     if v.startswith(f"{RUNTIME_ENV}=".encode())), "")
        found.setdefault(cid, {})[int(entry)] = root
    return found


class Watch(threading.Thread):
    """Reads :func:`copies` every :data:`SAMPLE_S` until stopped; keeps every moment two
    or more copies of one container ran (``doubles``: container -> the pids seen)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="copies")
        self.cids: set[str] = set()
        self.doubles: dict[str, set[int]] = {}
        self.samples = 0
        #: the longest time between the starts of two reads (seconds): a double shorter
        #: than that may have gone unseen (reported with the run's result)
        self.longest_gap_s = 0.0
        self._stop_ = threading.Event()

    def run(self) -> None:
        last: float | None = None
        while not self._stop_.is_set():
            now = time.monotonic()
            if last is not None:
                self.longest_gap_s = max(self.longest_gap_s, now - last)
            last = now
            for cid, pids in copies(set(self.cids)).items():
                if len(pids) > 1:
                    self.doubles.setdefault(cid, set()).update(pids)
            self.samples += 1
            time.sleep(SAMPLE_S)

    def stop(self) -> None:
        self._stop_.set()
        self.join()


@dataclass
class Service:
    """One service process: its command line, log, and whether a fault holds it (then
    the supervisor leaves it be)."""

    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    held: bool = False
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    #: exits no fault explains (not SIGKILL, not a deposition's status 1): their last lines
    unexplained: list[str] = field(default_factory=list)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.args], stdout=out,
                stderr=subprocess.STDOUT, env=dict(os.environ, CRDT_OPS_LOG="INFO"))
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class Platform:
    """The services of one run over ``url``, in ``workdir``, under group ``group``."""

    def __init__(self, url: str, workdir: Path, group: str, lease_s: float) -> None:
        self.url, self.workdir, self.group = url, workdir, group
        self.port = free_port()
        cells = ",".join(CELLS)
        #: each logic and worker reaches the broker through a proxy of its own (a cut)
        self.proxies = {name: Proxy(url) for name in (*LOGICS, *WORKERS)}

        def args(role: str, rid: str, name: str, *more: str) -> list[str]:
            via = self.proxies[name].url if name in self.proxies else url
            return [role, "--amqp-url", f"{via}?heartbeat={AMQP_HEARTBEAT_S}", "--group",
                    group, "--replica-id", rid, "--heartbeat-s", "0.5",
                    "--store", str(workdir / f"{name}.sqlite"), *more]

        self.services = {"web": Service("web", args("web", "web", "web", "--port",
                                                    str(self.port), "--cells", cells),
                                        workdir / "web.log")}
        for rid in LOGICS:
            self.services[rid] = Service(rid, args("logic", rid, rid, "--cells", cells),
                                         workdir / f"{rid}.log")
        for node, cell in WORKERS.items():
            self.services[node] = Service(node, args(
                "worker", f"worker.{node}", node, "--node", node, "--cell", cell,
                "--capacity", "20", "--lease-s", f"{lease_s:g}", "--runtime", "process",
                "--runtime-dir", str(self.runtime_dir(node))), workdir / f"{node}.log")
        self._lock = threading.Lock()
        self._supervising = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name="supervisor")
        self.say: Callable[[str], None] = lambda text: None

    def runtime_dir(self, node: str) -> Path:
        return self.workdir / f"run-{node}"

    def start(self) -> None:
        for s in self.services.values():
            s.start()
        self._supervising.set()
        self._thread.start()

    def _supervise(self) -> None:
        """Start again, :data:`RESTART_S` after it exited, each process no fault holds."""
        exited: dict[str, float] = {}
        while self._supervising.is_set():
            now = time.monotonic()
            with self._lock:
                for s in self.services.values():
                    if s.held or s.proc is None or s.proc.poll() is None:
                        continue
                    if s.name not in exited:
                        exited[s.name] = now
                        code, last = s.proc.returncode, _last_line(s.tail())
                        s.exits.append(code)
                        self.say(f"{s.name} exited with status {code}: {last}")
                        deposed = code == 1 and "deposed" in last.lower()
                        if code != -signal.SIGKILL and not deposed:
                            s.unexplained.append(f"status {code}: {last}")
                    elif now - exited[s.name] >= RESTART_S:
                        del exited[s.name]
                        s.start()
            time.sleep(0.1)

    @contextlib.contextmanager
    def holding(self, name: str) -> Any:
        """While the block runs, the supervisor leaves ``name`` be (a fault's target)."""
        with self._lock:
            self.services[name].held = True
        try:
            yield self.services[name]
        finally:
            with self._lock:
                self.services[name].held = False

    def stop(self) -> None:
        """Stop the supervisor and every process (SIGTERM, then SIGKILL after 30 s);
        every container of the run's runtime directories is killed."""
        self._supervising.clear()
        if self._thread.is_alive():
            self._thread.join()
        for proxy in self.proxies.values():
            if proxy.listener is None or proxy.listener.fileno() < 0:  # cut: let them stop
                proxy.up()
        for s in self.services.values():
            s.signal(signal.SIGCONT)
            s.signal(signal.SIGTERM)
        for s in self.services.values():
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        for proxy in self.proxies.values():
            proxy.down()
        stop_containers(self.runtime_dir(node) for node in WORKERS)  # and their guards

    def kill_copies(self, cids: Iterable[str], node: str | None = None) -> None:
        """SIGKILL every process of ``cids`` (of ``node``'s runtime directory only, if
        given) and its process group: a container's processes."""
        root = None if node is None else str(self.runtime_dir(node).resolve())
        for found in copies(cids).values():
            for pid in (p for p, r in found.items() if root is None or r == root):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call web (status, JSON body); (0, error) when it does not answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            with contextlib.suppress(ValueError):
                return e.code, json.loads(e.read() or b"null")
            return e.code, None
        except (OSError, ValueError) as e:
            return 0, str(e)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else "(no output)"


def _held_by(node: RabbitNode, queue: str) -> str | None:
    """The replica id whose connection holds exclusive queue ``queue`` (None: none)."""
    owners = dict(line.split("\t")[:2] for line in node.ctl(
        "list_queues", "name", "owner_pid", "-q").splitlines() if "\t" in line)
    name = node.connections().get(owners.get(queue, ""), "")
    return name.removeprefix("crdt-ops ") if name.startswith("crdt-ops ") else None


def _within(timeout_s: float, find: Callable[[], T | None], error: str) -> T:
    """What ``find`` finds (not None, not empty), asked every 0.5 s for up to
    ``timeout_s``; RuntimeError saying ``error`` after that."""
    deadline = time.monotonic() + timeout_s
    while not (found := find()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{error} (for {timeout_s:g}s)")
        time.sleep(0.5)
    return found


class Run:
    """One run: the broker, the platform, the client, the faults, the watch."""

    def __init__(self, opts: argparse.Namespace, workdir: Path,
                 say: Callable[[str], None]) -> None:
        self.opts, self.workdir, self.say = opts, workdir, say
        self.rng = random.Random(opts.seed)  # the client's
        self.fault_rng = random.Random(opts.seed + 1)  # the faults' (another thread)
        self.broker = RabbitNode(f"crdt-pchaos-{uuid.uuid4().hex[:8]}", workdir)
        self.group = new_group("pchaos")
        self.platform = Platform(self.broker.url, workdir, self.group, opts.lease_s)
        self.platform.say = say
        self.watch = Watch()
        self.cids: list[str] = []
        #: container -> the power its last accepted action asked for (Stop: off; Start
        #: and Restart: on)
        self.desired: dict[str, str] = {}
        #: containers whose last action got no answer (web killed as it wrote, say): web
        #: may or may not have taken it, so its own record says what was asked
        self.unknown: set[str] = set()
        self.actions = 0
        self.fault_thread: threading.Thread | None = None
        self.faults_done: list[str] = []

    def start(self) -> None:
        self.say(f"starting a RabbitMQ node of its own in {self.workdir}")
        self.broker.start()
        self.say(f"starting web, {len(LOGICS)} logics and {len(WORKERS)} workers "
                 f"(group {self.group})")
        self.platform.start()
        deadline = time.monotonic() + 120
        while self.platform.api("GET", "/healthz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("web did not answer /healthz with 200 within 120 s:\n"
                                   + self.platform.services["web"].tail())
            time.sleep(0.5)
        for n in range(self.opts.containers):
            status, rec = self.platform.api("POST", "/api/containers",
                                            {"name": f"c{n}", "owner": f"owner{n % 3}"})
            if status != 201:
                raise RuntimeError(f"creating a container: {status} {rec}")
            self.cids.append(rec["id"])
            self.desired[rec["id"]] = "off"
        self.watch.cids = set(self.cids)
        self.watch.start()

    def act(self) -> None:
        """One client action on a random container."""
        cid = self.rng.choice(self.cids)
        what = self.rng.choices(("start", "stop", "restart"), (5, 3, 2))[0]
        status, _ = self.platform.api("POST", f"/api/containers/{cid}/{what}")
        if status == 202:  # (a Restart starts a stopped container: services/web.py)
            self.actions += 1
            self.desired[cid] = "off" if what == "stop" else "on"
            self.unknown.discard(cid)
        elif status == 0:  # no answer: taken or not
            self.unknown.add(cid)

    def fault(self, kind: str) -> None:
        """Carry out one fault of ``kind``, to its end (a paused process woken)."""
        p, b = self.platform, self.broker
        if kind.startswith(("worker-", "node-")):
            name = self.fault_rng.choice(sorted(WORKERS))
        elif kind.startswith("logic-"):  # the one that places
            name = _within(30, lambda: _held_by(b, f"crdt.{self.group}.logic.held"),
                           "no logic holds its principal's queue")
        elif kind == "web-kill":
            name = "web"
        else:
            name = self.fault_rng.choice(sorted(p.services))
        self.say(f"fault {len(self.faults_done) + 1}: {kind}"
                 + ("" if kind.startswith("broker") else f" ({name})"))
        if kind.endswith("-kill") and not kind.startswith("broker"):
            p.services[name].signal(signal.SIGKILL)  # the supervisor starts it again
        elif kind.endswith("-pause"):
            with p.holding(name) as s:
                s.signal(signal.SIGSTOP)
                time.sleep(self._outage_s(kind))
                s.signal(signal.SIGCONT)
        elif kind == "node-crash":  # everything of the node dies: it comes back later
            with p.holding(name) as s:
                s.signal(signal.SIGKILL)
                guard = running_guard(p.runtime_dir(name))
                if guard is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(guard, signal.SIGKILL)
                p.kill_copies(self.cids, name)
                time.sleep(0.5)  # a start forked just before takes its name at its exec
                p.kill_copies(self.cids, name)
                time.sleep(self._outage_s(kind))
        elif kind.endswith("-cut"):  # the broker sees its connection close at once
            p.proxies[name].down()
            time.sleep(self._outage_s(kind))
            p.proxies[name].up()
        elif kind == "connection-close":
            args = p.services[name].args
            rid = args[args.index("--replica-id") + 1]
            for pid in _within(30, lambda: [c for c, n in b.connections().items()
                                            if n == f"crdt-ops {rid}"],
                               f"{rid} has no connection to close"):
                with contextlib.suppress(Exception):
                    b.ctl("close_connection", pid, "crdt-ops platform-chaos closes it")
        elif kind == "broker-restart":
            b.stop_app()
            time.sleep(2)
            b.start_app()
        elif kind == "broker-kill":
            b.kill()
            time.sleep(1)
            b.start()
        else:
            raise ValueError(kind)
        self.faults_done.append(kind)

    def _outage_s(self, kind: str) -> float:
        """How long a pause or a cut lasts: past a worker's lease (its containers move);
        past the broker's heartbeat timeout for a frozen logic (its standby takes over)."""
        return (self.opts.lease_s + 4 if kind.startswith(("worker-", "node-"))
                else 3 * AMQP_HEARTBEAT_S + 3)

    def agrees(self) -> list[str]:
        """What still disagrees: per container, web's record and what runs against the
        last action accepted (for one whose last action got no answer, against what web's
        record asks); each service that does not run; no logic holding the principal's
        queue (empty: all agree)."""
        running = copies(self.cids)
        wrong = [f"{s.name} is not running" for s in self.platform.services.values()
                 if not s.running()]
        with contextlib.suppress(Exception):  # (the broker's answer: asked again next time)
            holder = _held_by(self.broker, f"crdt.{self.group}.logic.held")
            if holder not in LOGICS:
                wrong.append(f"no logic places: the principal's queue is held by {holder}")
        for cid in self.cids:
            status, rec = self.platform.api("GET", f"/api/containers/{cid}")
            if status != 200:
                wrong.append(f"{cid}: web answered {status}")
                continue
            want = rec.get("power_desired") if cid in self.unknown else self.desired[cid]
            here = running.get(cid, {})
            nodes = sorted(Path(root).name.removeprefix("run-") for root in here.values())
            if rec.get("power_desired") != want:
                wrong.append(f"{cid}: desired {rec.get('power_desired')}, asked {want}")
            elif want == "off" and (here or rec.get("power_actual") == "on"):
                wrong.append(f"{cid}: off, but {len(here)} copies run, web shows "
                             f"{rec.get('power_actual')}")
            elif want == "on" and (rec.get("power_actual") != "on" or len(here) != 1
                                   or nodes != [rec.get("assigned_node")]):
                wrong.append(f"{cid}: on, web shows {rec.get('power_actual')} at "
                             f"{rec.get('assigned_node')}, copies at {nodes or 'none'}"
                             + (f" ({rec['rejected_reason']})"
                                if rec.get("rejected_reason") else ""))
        return wrong

    def run(self) -> tuple[bool, float | None]:
        """The actions and faults for ``--duration`` s, then the wait for agreement:
        (agreed, seconds from the faults' end to agreement)."""
        order: list[str] = []
        t0 = time.monotonic()
        end = t0 + self.opts.duration
        next_fault = t0 + self.opts.fault_interval_s
        next_note = t0 + 10
        fault: threading.Thread | None = None
        errors: list[BaseException] = []

        def carry_out(kind: str) -> None:
            try:
                self.fault(kind)
            except BaseException as e:  # said at the end; the run goes on
                errors.append(e)
                self.say(f"fault {kind} failed: {e}")

        while time.monotonic() < end or (fault is not None and fault.is_alive()):
            now = time.monotonic()
            if now < end and now >= next_fault and (fault is None or not fault.is_alive()):
                if not order:
                    order = list(self.opts.faults)
                    self.fault_rng.shuffle(order)
                fault = threading.Thread(target=carry_out, args=(order.pop(),), daemon=True)
                self.fault_thread = fault
                fault.start()
                next_fault = now + self.opts.fault_interval_s
            if now < end:
                self.act()
            if now >= next_note:
                on = sum(1 for v in self.desired.values() if v == "on")
                self.say(f"{now - t0:.0f}s: {self.actions} actions, {len(self.faults_done)} "
                         f"faults, {on} containers asked on, doubled so far "
                         f"{len(self.watch.doubles)}")
                next_note = now + 10
            time.sleep(self.opts.action_interval_s)
        if errors:
            raise RuntimeError(f"a fault could not be carried out: {errors[0]}")
        quiet = time.monotonic()
        self.say(f"faults over; waiting up to {self.opts.timeout:.0f}s for every container "
                 f"to agree with the last action ({sum(v == 'on' for v in self.desired.values())}"
                 f" of {len(self.cids)} on)")
        deadline = quiet + self.opts.timeout
        settle_s = 2 * self.opts.lease_s + 5
        agreed_at: float | None = None  # since when all agree (None: they do not now)
        next_note = quiet + 10
        while True:
            wrong = self.agrees()
            now = time.monotonic()
            if wrong:
                agreed_at = None
            elif agreed_at is None:
                agreed_at = now
                self.say(f"all agree; watching {settle_s:g}s more (two leases: what the "
                         "last fault set going, a deposition, a lease running out, comes "
                         "first)")
            if agreed_at is None and now >= deadline:  # (the timeout is for agreeing:
                break  # agreement then always holds for settle_s)
            if agreed_at is not None and now - agreed_at >= settle_s:
                break
            if wrong and now >= next_note:
                self.say(f"{len(wrong)} disagree, e.g. {wrong[0]}")
                next_note = now + 10
            time.sleep(1)
        for w in wrong:
            self.say(f"disagrees: {w}")
        return not wrong, None if agreed_at is None else agreed_at - quiet

    def stop(self) -> None:
        """Everything of the run ended: a fault in flight first (a broker it would start
        again after the run's end would be left running), then the platform, every copy of
        the run's containers, and the broker."""
        if self.fault_thread is not None:
            self.fault_thread.join(timeout=120)
        if self.watch.is_alive():
            self.watch.stop()
        self.platform.stop()
        self.platform.kill_copies(self.cids)
        with contextlib.suppress(Exception):
            self.broker.destroy()


def run_platform_chaos(opts: argparse.Namespace) -> int:
    """The whole run; the summary and the last line on stdout, progress on stderr."""
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"platform-chaos [{time.monotonic() - t0:6.1f}s] {text}", file=sys.stderr,
              flush=True)

    workdir = opts.keep_dir or Path(tempfile.mkdtemp(prefix="crdt-pchaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleaned up as Ctrl-C is
    run = Run(opts, workdir, say)
    try:
        run.start()
        agreed, seconds = run.run()
        run.watch.stop()
        doubled = run.watch.doubles
        for cid, pids in doubled.items():
            print(f"doubled: {cid} ran as {len(pids)} processes at once: "
                  f"{sorted(pids)}")
        services = run.platform.services.values()
        print("restarts: " + ", ".join(f"{s.name} {s.starts - 1} (exits: "
                                       f"{','.join(map(str, s.exits)) or '-'})"
                                       for s in services))
        print(f"faults: {', '.join(run.faults_done)}; copies read {run.watch.samples:,} "
              f"times, at most {run.watch.longest_gap_s * 1000:.0f} ms apart")
        unexplained = [f"{s.name}: {why}" for s in services for why in s.unexplained]
        for line in unexplained:
            print(f"exit no fault explains: {line}")
        print(f"actions={run.actions} faults={len(run.faults_done)} doubled={len(doubled)} "
              f"converged={'true' if agreed else 'false'} "
              f"seconds={float('nan') if seconds is None else seconds:.1f}", flush=True)
        ok = agreed and not doubled and not unexplained
        if not ok:
            for s in services:
                print(f"--- {s.name} log tail ---\n{s.tail(2500)}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        run.stop()
        if opts.keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault {unknown[0]!r}" if unknown else "name at least one fault"
            + f"; the kinds: {', '.join(FAULTS)}")
    return kinds


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``crdt-ops platform-chaos`` (registered by :mod:`tools.commands`)."""
    p.add_argument("--duration", type=float, default=180,
                   help="seconds of actions and faults (default %(default)s)")
    p.add_argument("--containers", type=int, default=8,
                   help="containers the client acts on (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed of the actions and the faults' order")
    p.add_argument("--lease-s", type=float, default=8,
                   help="the workers' lease (default %(default)s; at least 4)")
    p.add_argument("--action-interval-s", type=float, default=0.3,
                   help="seconds between the client's actions (default %(default)s)")
    p.add_argument("--fault-interval-s", type=float, default=15,
                   help="seconds from one fault's start to the next one's, at least "
                        "(default %(default)s)")
    p.add_argument("--faults", type=_faults, default=FAULTS, metavar="KIND,...",
                   help=f"the kinds of fault, each once per round (default all: "
                        f"{', '.join(FAULTS)})")
    p.add_argument("--timeout", type=float, default=180,
                   help="seconds to wait, after the faults, for every container to agree "
                        "(default %(default)s)")
    p.add_argument("--keep-dir", type=Path, default=None,
                   help="work in this directory and keep it (stores, logs, the broker's data)")
    p.set_defaults(func=run_platform_chaos)
