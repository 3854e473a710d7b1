"""A throwaway RabbitMQ node on this machine, for fault injection and tests.

Each :class:`RabbitNode` is a broker of its own (node name ``<name>@localhost``,
its own AMQP and distribution ports, data and logs under its own directory),
started from the machine's RabbitMQ installation (Debian's ``rabbitmq-server``)
beside whatever broker already runs. So it can be stopped, SIGKILLed, restarted,
given TLS listeners or joined into a cluster without disturbing anyone else.

Needs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` and either root (the node runs as
the ``rabbitmq`` user and shares its Erlang cookie, so ``rabbitmqctl -n`` reaches
it) or to be run as the ``rabbitmq`` user itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from services.pids import alive
from tools.harness import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_HOME = Path("/var/lib/rabbitmq")


class RabbitNodeError(RuntimeError):
    """The node could not be started or controlled; the message says why."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class RabbitNode:
    """One extra RabbitMQ node. ``config`` is appended to its ``rabbitmq.conf``
    (e.g. TLS listener settings); the AMQP listener is ``127.0.0.1:port``."""

    def __init__(self, name: str, workdir: Path, *, port: int | None = None,
                 config: str = "") -> None:
        if not SERVER.exists():
            raise RabbitNodeError(f"{SERVER} is missing: install Debian's rabbitmq-server "
                                  "(apt-get install rabbitmq-server)")
        self.name = name
        self.node = f"{name}@localhost"
        self.port = port or free_port()
        self.dist_port = free_port()
        self.dir = Path(workdir) / name
        self.config = config
        self._user = _run_as()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 120.0) -> RabbitNode:
        """Start the node (keeping its data from an earlier run) and wait until it
        accepts AMQP connections."""
        if port_open(self.port):
            raise RabbitNodeError(f"port {self.port} of {self.node} is taken by another process")
        self.dist_port = free_port()  # picked now: one picked long before may be taken since
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._user:  # the node's user must reach its directory (mkdtemp makes 0700)
            _make_traversable(self.dir.parent)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n" + self.config)
        _chown_tree(self.dir, self._user)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(RABBITMQ_HOME if self._user else self.dir),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        cmd = [str(SERVER), "-detached"]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", "env", *(f"{k}={v}" for k, v in env.items()),
                   *cmd]
        (self.dir / "pid").unlink(missing_ok=True)
        with (self.dir / "startup.log").open("ab") as out:  # what the VM says before its log
            subprocess.run(cmd, env=env, cwd=self.dir, check=True, stdout=out,
                           stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the node accepts AMQP connections."""
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"RabbitMQ node {self.node} did not listen on port "
                                      f"{self.port} within {timeout:.0f}s; see {self.dir}/log"
                                      f"{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the node's log (for errors: the directory may be gone later)."""
        log = self.dir / "log" / f"{self.node}.log"
        text = ""
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            text = "\n--- " + str(log) + " (end) ---\n" + "\n".join(tail)
        startup = self.dir / "startup.log"
        if startup.exists() and startup.stat().st_size:
            text += ("\n--- " + str(startup) + " (end) ---\n"
                     + "\n".join(startup.read_text(errors="replace").splitlines()[-10:]))
        dump = self.dir / "erl_crash.dump"
        if dump.exists():  # the VM died at boot: its reason is the dump's slogan
            with dump.open(errors="replace") as f:
                text += "\n--- " + str(dump) + " ---\n" + "".join(f.readline() for _ in range(3))
        return text

    def pid(self) -> int | None:
        """The node's Erlang VM process, while it runs."""
        try:
            pid = int((self.dir / "pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL the node's VM (a crash: nothing is flushed or closed)."""
        pid = self.pid()
        if pid is None:
            raise RabbitNodeError(f"{self.node} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.pid() is not None or port_open(self.port):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self.node} (pid {pid}) survived SIGKILL for 30s")
            time.sleep(0.1)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self, timeout: float = 120.0) -> None:
        self.ctl("start_app")
        self.wait_ready(timeout)

    def stop(self) -> None:
        """Stop the node if it runs (gracefully, else SIGKILL), and return once its VM is
        gone: ``rabbitmqctl stop`` answers before the VM exits, and a node started again
        while the old VM still holds its name (in epmd) and its data fails to boot."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(RabbitNodeError):  # then it is killed below
            self.ctl("stop", timeout=60)
        # the VM itself, not its pid file: the node removes that file before its VM exits
        # (seen after a SIGKILL and a start: the file gone, the VM still running)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            while alive(pid):
                time.sleep(0.1)

    def destroy(self) -> None:
        """Stop the node and delete its data."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def join(self, other: RabbitNode) -> None:
        """Make this node a member of ``other``'s cluster (its own data is reset)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", other.node)
        self.start_app()

    def connections(self) -> dict[str, str]:
        """The node's client connections that give a ``connection_name`` (crdt-ops
        replicas give ``crdt-ops <replica id>``: crdt_ops/transport/amqp/connection.py):
        the broker's pid of each -> that name (``rabbitmqctl list_connections``)."""
        found = {}
        for line in self.ctl("list_connections", "pid", "client_properties", "-q").splitlines():
            name = re.search(r'"connection_name",(?:"longstr",)?"([^"]+)"', line)
            if name:
                found[line.split("\t")[0]] = name.group(1)
        return found

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n <node> ARGS`` and return its output."""
        try:
            out = subprocess.run(["rabbitmqctl", "-n", self.node, *args], capture_output=True,
                                 text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RabbitNodeError(f"rabbitmqctl -n {self.node} {' '.join(args)} took over "
                                  f"{timeout:.0f}s") from e
        if out.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed "
                                  f"({out.returncode}): {(out.stderr or out.stdout).strip()}")
        return out.stdout

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _run_as() -> str | None:
    """The user to run a node as: ``rabbitmq`` when we are root, else ourselves."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("rabbitmq")
        except KeyError:
            raise RabbitNodeError("no 'rabbitmq' user: install Debian's rabbitmq-server") from None
        return "rabbitmq"
    if pwd.getpwuid(os.geteuid()).pw_name != "rabbitmq":
        raise RabbitNodeError("starting a RabbitMQ node needs root (it runs as the rabbitmq "
                              "user) or the rabbitmq user itself")
    return None


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the node's user pass through ``path`` and those of its ancestors that we
    own inside the system's temporary directory (x only; e.g. pytest's 0700 dirs).
    Anything else it cannot reach is an error saying so: nothing else is chmodded."""
    me, tmp = os.geteuid(), Path(tempfile.gettempdir()).resolve()
    for p in [path.resolve(), *path.resolve().parents]:
        if p == tmp or tmp not in p.parents:
            break
        st = p.stat()
        if st.st_uid == me and not st.st_mode & 0o001:
            p.chmod(st.st_mode | 0o711)
    for p in [path.resolve(), *path.resolve().parents]:
        if not p.stat().st_mode & 0o001 and p.stat().st_uid != pwd.getpwnam("rabbitmq").pw_uid:
            raise RabbitNodeError(f"the rabbitmq user cannot enter {p}: give RabbitNode a "
                                  f"directory under {tmp}")
