"""``crdt-ops replica`` as an OS process: the one launcher the chaos run, the fuzz run
and the tests share (they add their own arguments: workload, ledger, heartbeat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGTERM
from typing import Any, Self


class ReplicaProcess:
    """``python -m services.cli replica`` as a child OS process, with its store
    (``<id>.sqlite``), state file (``<id>.json``) and log (``<id>.log``) in ``workdir``.

    What it guarantees:

    - :meth:`start` runs ``services.cli replica --amqp-url URL --group G --replica-id R
      --store STORE --state-file STATE [args]`` with the same interpreter; stdout and
      stderr are *appended* to the log, so a process started again (on the same store,
      after :meth:`kill`) keeps the earlier output. ``CRDT_OPS_LOG`` is ``log_level``
      when given, else this process's ``CRDT_OPS_LOG``, else ``WARNING``.
    - :meth:`stop` never raises on a process that was not started or has ended; it
      sends SIGCONT (a paused process could not act on SIGTERM) and SIGTERM, and
      SIGKILL after ``timeout`` seconds; it returns once the process is gone.
    - :meth:`kill` delivers a signal (SIGKILL by default) and waits up to 30 s for the
      process to end (:class:`subprocess.TimeoutExpired` after that).
    - :meth:`report` is the last state file the replica wrote, as a dict, or ``{}``
      while there is none or it cannot be parsed (never raises for that).
    - :meth:`tail` and :meth:`rss_kb` never raise either: ``""`` and ``0`` when there
      is nothing to show (undecodable bytes in the log are replaced).
    """

    def __init__(self, url: str, group: str, replica_id: str, workdir: Path,
                 args: Sequence[str] = (), log_level: str | None = None) -> None:
        self.url, self.group, self.replica_id = url, group, replica_id
        self.state_file = workdir / f"{replica_id}.json"
        self.store = workdir / f"{replica_id}.sqlite"
        self.log = workdir / f"{replica_id}.log"
        self.args = list(args)
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "services.cli", "replica", "--amqp-url", self.url,
                "--group", self.group, "--replica-id", self.replica_id,
                "--store", str(self.store), "--state-file", str(self.state_file), *self.args]

    def start(self) -> Self:
        level = self.log_level or os.environ.get("CRDT_OPS_LOG", "WARNING")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, CRDT_OPS_LOG=level))
        return self

    def signal(self, sig: int) -> None:
        """Send ``sig`` (the process must have been started)."""
        assert self.proc is not None, f"replica {self.replica_id} was never started"
        self.proc.send_signal(sig)

    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) and wait up to 30 s for the end."""
        self.signal(sig)
        assert self.proc is not None
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """SIGCONT (if paused) and SIGTERM; SIGKILL after ``timeout`` seconds."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(SIGCONT)
        self.proc.send_signal(SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        """Started and not ended (a paused process is alive)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (negative: the signal), else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def report(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def rss_kb(self) -> int:
        """Resident set size (``VmRSS`` in ``/proc/<pid>/status``), 0 when unknown."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0
