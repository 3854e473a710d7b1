"""Every long-running command stops promptly on SIGTERM and on SIGINT, in every state:
connecting (a wrong password: the broker refuses it for ever), replaying the stream,
waiting to be admitted, running; and the in-memory tools mid-run. Each ends with a
sensible status (0 once it ran; 128 + the signal before it was up or mid-run) and one
line saying so, without a traceback.

Real OS processes (``python -m services.cli``), against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from crdt_ops.replica import Replica
from crdt_ops.transport.topology import Topology
from services import model
from tests.broker import claim_founding
from tools.harness import delete_queues, free_port

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVICES = ("replica", "web", "logic", "worker")
PROMPT_S = 5.0  # "promptly": the longest a command may take to end after the signal


@dataclass
class Proc:
    what: str
    proc: subprocess.Popen[bytes]
    log: Path
    sig: int = signal.SIGTERM
    prompt_s: float = PROMPT_S

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    sent: float = 0.0

    def send(self) -> None:
        """Send the signal (its time is kept for ``check``)."""
        self.proc.send_signal(self.sig)
        self.sent = time.monotonic()

    def check(self, code: int, says: str) -> str:
        """After ``send``: the command must end within ``prompt_s`` of the signal with
        ``code`` and, as its last line, one that contains ``says``; no traceback. Returns
        what is wrong ("" if nothing)."""
        start = self.sent
        try:
            self.proc.wait(timeout=self.prompt_s + 25)  # (how long it took is asserted)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"{self.what}: still running {self.prompt_s + 25}s after the signal"
        took = time.monotonic() - start
        text = self.text()
        last = text.strip().splitlines()[-1] if text.strip() else ""
        name = signal.Signals(self.sig).name
        why = []
        if took > self.prompt_s:
            why.append(f"took {took:.1f}s")
        if self.proc.returncode != code:
            why.append(f"exit {self.proc.returncode}, not {code}")
        if "Traceback" in text:
            why.append("a traceback")
        if says not in last or name not in last:
            why.append(f"last line {last!r} does not say {says!r} and {name}")
        return f"{self.what}: {'; '.join(why)}\n--- log ---\n{text[-2000:]}" if why else ""


def start(what: str, args: list[str], workdir: Path, sig: int) -> Proc:
    log = workdir / f"{what}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_OPS_")}
    env["CRDT_OPS_LOG"] = "INFO"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its children: killed with it
    return Proc(what, proc, log, sig)


def service_args(command: str, url: str, group: str, n: int, workdir: Path) -> list[str]:
    """``command``'s arguments for instance ``n`` (its own id, store, port)."""
    rid = {"replica": f"r{n}", "web": f"web.i{n}", "logic": f"logic.i{n}",
           "worker": f"worker.n{n}"}[command]
    args = [command, "--amqp-url", url, "--group", group, "--replica-id", rid,
            "--store", str(workdir / f"{rid}.sqlite"), "--heartbeat-s", "0.5"]
    if command == "web":
        args += ["--port", str(free_port())]
    if command == "worker":
        args += ["--node", f"n{n}", "--runtime", "process",
                 "--runtime-dir", str(workdir / f"run-{n}")]
    return args


def wait_all(procs: list[Proc], ready: Callable[[Proc], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if not ready(p)]
        for p in waiting:
            assert p.proc.poll() is None, f"{p.what} ended early:\n{p.text()[-2000:]}"
        time.sleep(0.2)
    assert not waiting, "never got there: " + ", ".join(
        f"{p.what}\n{p.text()[-1500:]}" for p in waiting)


IDS = [f"r{n}" for n in range(4)] + [f"{r}.i{n}" for r in ("web", "logic")
                                      for n in range(4)] + [f"worker.n{n}" for n in range(4)]


class Tracker:
    """The processes and groups of one test: at its end the processes are killed (if
    still running), then the groups deleted from the broker."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir = url, workdir
        self.procs: list[Proc] = []
        self.groups: list[str] = []

    def group(self) -> str:
        self.groups.append(f"test-sig-{uuid.uuid4().hex[:8]}")
        return self.groups[-1]

    def start(self, what: str, args: list[str], sig: int) -> Proc:
        self.procs.append(start(what, args, self.workdir, sig))
        return self.procs[-1]

    def close(self) -> None:
        for p in self.procs:  # and whatever they started (a demo's services)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()
        for g in (g for platform in self.groups for g in model.groups(platform)):
            queues, exchanges = Topology(g).objects(IDS)
            asyncio.run(delete_queues(self.url, queues, exchanges))


@pytest.fixture
def track(amqp_url: str, tmp_path: Path) -> Iterator[Tracker]:
    t = Tracker(amqp_url, tmp_path)
    yield t
    t.close()


def finish(procs: list[Proc], code: Callable[[Proc], int], says: str,
           says_of: Callable[[Proc], str] | None = None, together: bool = False) -> None:
    """Stop each of ``procs`` and check its status (``code``) and its last line (``says``,
    or ``says_of`` the process): one after the other, each once the one before ended
    (an order some tests need), or, ``together``, every signal sent before any wait (for
    a state that passes on its own: the last one signalled would otherwise come up to
    ``prompt_s`` per process later)."""
    problems = []
    if together:
        for p in procs:
            p.send()
    for p in procs:
        if not together:
            p.send()
        problems.append(p.check(code(p), says if says_of is None else says_of(p)))
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
    assert not [p for p in problems if p], "\n\n".join(p for p in problems if p)


def test_services_stop_while_connecting_with_a_wrong_password(amqp_url: str,
                                                              track: Tracker) -> None:
    """Connecting: the broker refuses the password, the command retries with backoff;
    SIGTERM and SIGINT end it at once (status 128 + signal)."""
    bad = amqp_url.replace("guest:guest", "guest:wrong-password")
    assert bad != amqp_url
    group = track.group()
    procs = [track.start(f"{c}-{signal.Signals(sig).name}",
                         service_args(c, bad, group, n, track.workdir), sig)
             for n, sig in enumerate(SIGNALS) for c in SERVICES]
    wait_all(procs, lambda p: "could not join group" in p.text(), 60)
    finish(procs, lambda p: 128 + p.sig, "while connecting to the broker")


def _get(port: int, path: str) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """GET ``path`` of web on ``port``: status, JSON body, headers (a 503 too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def _answers(port: int, path: str, status: int) -> bool:
    with contextlib.suppress(OSError):
        return _get(port, path)[0] == status
    return False


def test_web_answers_503_and_why_until_it_has_joined(amqp_url: str, track: Tracker) -> None:
    """Before it has joined its group (here the broker refuses its password for ever) web's
    port answers: ``/healthz`` 503 naming the broker it connects to, the API 503 with
    ``Retry-After``; a refused connection told a client nothing. Once joined (the right
    password), the API serves."""
    group = track.group()
    bad = track.start("web-refused", service_args(
        "web", amqp_url.replace("guest:guest", "guest:wrong-password"), group, 0,
        track.workdir), signal.SIGTERM)
    port = int(bad.proc.args[bad.proc.args.index("--port") + 1])  # type: ignore[union-attr]
    wait_all([bad], lambda p: "could not join group" in p.text(), 60)
    status, body, _ = _get(port, "/healthz")
    assert status == 503 and body["broker"].startswith("connecting to amqp://guest:***@"), body
    status, body, headers = _get(port, "/api/containers")
    assert status == 503 and headers["Retry-After"] == "2", (status, body)
    assert "web is starting" in body["error"] and "connecting to" in body["error"], body
    finish([bad], lambda p: 128 + p.sig, "while connecting to the broker")
    good = track.start("web", service_args("web", amqp_url, group, 1, track.workdir),
                       signal.SIGTERM)
    port = int(good.proc.args[good.proc.args.index("--port") + 1])  # type: ignore[union-attr]
    wait_all([good], lambda p: _answers(port, "/healthz", 200), 60)
    assert _get(port, "/api/containers")[0] == 200
    finish([good], lambda p: 0, "stopped (")


def test_services_stop_while_connecting_to_a_broker_that_never_answers(
        track: Tracker) -> None:
    """Connecting to a port that accepts the TCP connection and then says nothing (the
    AMQP handshake hangs until its 10 s timeout): the signal ends it at once all the same
    (aio-pika's reconnect loop, which swallows a cancellation, is closed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/"
    try:
        procs = [track.start(f"{c}-{signal.Signals(sig).name}",
                             service_args(c, url, "silent", n, track.workdir), sig)
                 for n, sig in enumerate(SIGNALS) for c in SERVICES]
        wait_all(procs, lambda p: len(held) >= len(procs), 30)
        time.sleep(1)  # inside the handshake
        finish(procs, lambda p: 128 + p.sig, "while connecting to the broker")
    finally:
        listener.close()
        for c in held:
            c.close()


def test_services_stop_while_running(amqp_url: str, track: Tracker) -> None:
    """Running (each founded a group of its own and serves): the signal stops it
    cleanly, status 0."""
    procs = [track.start(f"{c}-{signal.Signals(sig).name}",
                         service_args(c, amqp_url, track.group(), n, track.workdir), sig)
             for n, sig in enumerate(SIGNALS) for c in SERVICES]
    wait_all(procs, lambda p: "founded group" in p.text(), 60)
    time.sleep(1)  # web serving, logic and workers at work
    finish(procs, lambda p: 0, "stopped (")


def test_services_stop_while_waiting_to_be_admitted(amqp_url: str, track: Tracker) -> None:
    group = track.group()
    for g in model.groups(group):  # the platform's (web, logic) and its cell's (workers)
        asyncio.run(claim_founding(amqp_url, g))
    procs = [track.start(f"{c}-{signal.Signals(sig).name}",
                         service_args(c, amqp_url, group, n, track.workdir), sig)
             for n, sig in enumerate(SIGNALS) for c in SERVICES]
    # (one logic runs at a time: the other waits as a standby, and stops the same way;
    # stopped first, before the one it waits for lets it go on)
    wait_all(procs, lambda p: "asks the members of group" in p.text()
             or "waits as a standby" in p.text(), 90)
    procs.sort(key=lambda p: "waits as a standby" not in p.text())
    finish(procs, lambda p: 128 + p.sig, "", lambda p: "while waiting as a standby"
           if "waits as a standby" in p.text() else "while waiting to be admitted")


async def _fill_stream(url: str, group: str, n: int) -> None:
    """The group's stream with ``n`` heartbeats in it (a replay of some seconds)."""
    s = Topology(group)
    r = Replica("ghost")
    r.heartbeat()
    body = r.outgoing()[0]
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(s.stream, durable=True,
                               arguments={"x-queue-type": "stream", "x-max-age": "7D"})
        for i in range(0, n, 500):
            await asyncio.gather(*(ch.default_exchange.publish(aio_pika.Message(body),
                                                               routing_key=s.stream)
                                   for _ in range(min(500, n - i))))


async def _queue_exists(url: str, name: str) -> bool:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        try:
            await ch.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


def test_replica_stops_while_replaying_the_stream(amqp_url: str, track: Tracker) -> None:
    """A new replica binds its queue, then replays the stream (here 12,000 messages, one
    at a time: 4-5 s on a quiet machine); the signal comes once its queue exists and
    before it consumes, to both replicas at once (sent one after the other, the second
    came as much as ``PROMPT_S`` later: once, in CI, after its 4,000-message replay of
    then, 1.5 s, was over)."""
    groups = [track.group() for _ in SIGNALS]
    for g in groups:
        asyncio.run(_fill_stream(amqp_url, g, 12000))
    procs = [track.start(f"replica-{signal.Signals(sig).name}",
                         [*service_args("replica", amqp_url, g, n, track.workdir),
                          "--prefetch", "1"], sig)
             for n, (g, sig) in enumerate(zip(groups, SIGNALS, strict=True))]
    for n, (g, p) in enumerate(zip(groups, procs, strict=True)):
        deadline = time.monotonic() + 60
        while not asyncio.run(_queue_exists(amqp_url, Topology(g).queue(f"r{n}"))):
            assert time.monotonic() < deadline, f"{p.what} never began to replay"
            time.sleep(0.1)
    assert not [p for p in procs if "consuming" in p.text()], "the replay was over already"
    finish(procs, lambda p: 128 + p.sig, "while replaying group", together=True)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_in_memory_tools_stop_mid_run(track: Tracker, sig: int) -> None:
    """simulate and histories (in memory, minutes long with these sizes)."""
    procs = [track.start("simulate", ["simulate", "--replicas", "300", "--ops", "10000000"],
                         sig),
             track.start("histories", ["histories", "--count", "1000000"], sig)]
    wait_all(procs[:1], lambda p: "simulating" in p.text(), 30)
    time.sleep(1)  # mid-run
    finish(procs, lambda p: 128 + p.sig, "stopped by")


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_stop_signal_lost_in_a_finaliser_is_raised_again_where_a_computation_checks(
        sig: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python loses what a signal's handler raises while a ``__del__`` runs (it prints
    "Exception ignored in ..."): a long computation (``histories``, ``simulate``) then ran
    on to its end. Seen once: ``histories`` still running 30 s after SIGINT. The handlers
    remember the signal, and the computation's check raises it again."""
    from services import process

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), sig)
            sum(range(1000))  # the handler runs here, in the finaliser

    handlers = {signal.SIGINT: process.raise_interrupt,
                signal.SIGTERM: process.raise_terminated}
    lost: list[type[BaseException] | None] = []  # what Python reports as "ignored"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: lost.append(u.exc_type))
    old = signal.signal(sig, handlers[sig])
    try:
        Finalised()  # its __del__ runs at once: the signal's exception is lost there
        assert lost and lost[0] is not None and issubclass(lost[0], KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt) as raised:
            process.stop_if_requested()
        assert isinstance(raised.value, process.Terminated) == (sig == signal.SIGTERM)
    finally:
        signal.signal(sig, old)
        process._requested = None


def test_fuzz_and_chaos_stop_mid_run(amqp_url: str, track: Tracker) -> None:
    """fuzz (its replicas over the broker) and chaos (its own throwaway RabbitMQ node,
    being started) clean up what they started and end with one line."""
    procs = [track.start(f"fuzz-{signal.Signals(sig).name}",
                         ["fuzz", "--messages", "100000", "--replicas", "2", "--amqp-url",
                          amqp_url], sig) for sig in SIGNALS]
    procs.append(track.start("chaos-SIGINT", ["chaos", "--ops", "2000"], signal.SIGINT))
    procs[-1].prompt_s = 20  # it stops the RabbitMQ node it started: seconds
    wait_all(procs[:2], lambda p: "fuzz: group" in p.text(), 30)
    wait_all(procs[2:], lambda p: "starting RabbitMQ node" in p.text(), 30)
    time.sleep(1)
    finish(procs, lambda p: 128 + p.sig, "stopped by")


def test_demo_over_rabbitmq_stops_while_starting(amqp_url: str, track: Tracker) -> None:
    """A stop signal before the demo's page answers: it stops its services and says it
    stopped before the page answered (test_demo_cleanup: what it leaves on the broker)."""
    procs = [track.start(f"demo-{signal.Signals(sig).name}",
                         ["demo", "--amqp-url", amqp_url, "--port", str(free_port())], sig)
             for sig in SIGNALS]
    wait_all(procs, lambda p: "using RabbitMQ" in p.text(), 30)
    time.sleep(0.2)  # its services are starting (on a quiet machine the page answers in ~1 s)
    problems = []
    for p in procs:
        p.proc.send_signal(p.sig)
    for p in procs:
        try:
            p.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            problems.append(f"{p.what}: did not stop")
            continue
        text = p.text()
        name = signal.Signals(p.sig).name
        if "Traceback" in text or f"stopped by {name} before the page answered" not in text \
                or p.proc.returncode != 128 + p.sig:
            problems.append(f"{p.what}: exit {p.proc.returncode}\n{text[-2000:]}")
    assert not problems, "\n".join(problems)


def test_a_cancellation_raised_over_a_stop_signal_still_ends_as_the_signal() -> None:
    """``asyncio.run`` interrupted by SIGINT cancels what is left, and aiormq's close can
    raise that cancellation over the KeyboardInterrupt (a CI run of the fuzz test above
    ended in a traceback that way): the command still says it was stopped."""
    from services import cli
    from services.process import Terminated

    def over(stop: KeyboardInterrupt) -> BaseException:
        try:
            try:
                raise stop
            except KeyboardInterrupt:
                raise asyncio.CancelledError() from None  # as aiormq's callback raises it
        except BaseException as e:  # the test looks at what was raised
            return e

    assert isinstance(cli._stop_signal(over(Terminated())), Terminated)
    assert isinstance(cli._stop_signal(over(KeyboardInterrupt())), KeyboardInterrupt)
    assert cli._stop_signal(asyncio.CancelledError()) is None


async def _signalled_and_cancelled_twice(sig: int) -> str:
    """Sends this process ``sig``, then waits; cancelled, it cancels its own task once
    more before it unwinds (as a library's close can)."""
    task = asyncio.current_task()
    assert task is not None
    os.kill(os.getpid(), sig)
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        task.cancel()
        raise
    return "not stopped"


def test_a_run_stopped_by_a_signal_ends_as_the_signal_however_the_task_unwinds() -> None:
    """``run_stoppable`` (the fuzz tool's event loop runs): a signal during the run ends it
    as KeyboardInterrupt or Terminated, where plain ``asyncio.run`` ends with a bare
    CancelledError once the task added a cancellation of its own (a CI run of the fuzz
    test above ended in that traceback); the process's handlers are as before after it."""
    from services.process import Terminated, run_stoppable

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # asyncio.run's
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_signalled_and_cancelled_twice(signal.SIGINT))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_stoppable(_signalled_and_cancelled_twice(signal.SIGINT))
    assert type(stopped.value) is KeyboardInterrupt
    with pytest.raises(Terminated):
        run_stoppable(_signalled_and_cancelled_twice(signal.SIGTERM))
    assert time.monotonic() - t0 < 5
    assert {s: signal.getsignal(s) for s in before} == before
    assert run_stoppable(asyncio.sleep(0, "done")) == "done"


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (``SigCgt`` in
    /proc/PID/status, a bit per signal)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_while_the_command_loads_ends_it_at_once(sig: int, tmp_path: Path) -> None:
    """A signal that comes while ``crdt-ops`` still imports its modules (its first handler
    is in, main() has not installed its own) ends it with 128 + the signal and one line,
    whatever the imports are doing (services/cli.py, ``_while_loading``)."""
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "replica", "--help"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    # SIGTERM's handler, set just before SIGINT's (Python catches SIGINT from its start)
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.001)
    proc.send_signal(sig)
    assert proc.wait(timeout=PROMPT_S) == 128 + sig, log.read_text()
    assert log.read_text().strip() == \
        f"crdt-ops: stopped by {signal.Signals(sig).name} while starting"


def test_a_service_loop_that_fails_stops_the_service_with_its_error() -> None:
    """Logic's or a worker's loop ending by an error used to leave the process up doing
    nothing (no beats, no decisions): now the service stops with status 1 for its
    supervisor to start it again (``services.main.main`` returns 1 for ServiceFailed)."""
    from services.process import ServiceFailed, StopSignals

    async def run() -> None:
        signals = StopSignals()

        async def broken() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")
        with pytest.raises(ServiceFailed, match=r"logic's loop ended \(RuntimeError: boom\); "
                                                r"stopping with status 1") as e:
            await signals.until_stopped("logic", broken())
        assert isinstance(e.value.__cause__, RuntimeError)

        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                cancelled.set()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await signals.until_stopped("worker-1", forever())  # a signal: returns
        assert cancelled.is_set() and signals.name == "SIGTERM"
    asyncio.run(run())
