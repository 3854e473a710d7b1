"""A replica process's ledger: what it issued and what it applied, line by line, read by
:func:`tools.chaos.audit` to count operations lost or applied twice.

The ledger is written by each replica process (``crdt-ops replica --ledger FILE``,
:class:`LedgerWriter`) into a file of its own, independently of its state and store,
one line per ``write(2)`` on an ``O_APPEND`` descriptor (a SIGKILL leaves whole lines,
and every line is in the kernel before the code after it runs):

- ``S <clock as JSON>``: the process started; the clock its store recovered (state
  rebuilt from snapshot and log, before any message is received). The replay of the
  store does not reach the ledger (the hook is added after it): it applies nothing new.
- ``A <origin> <first> <last>``: ``Replica.on_applied``: operations first..last of
  origin were applied here (local ones included, at their origin).
- ``P <first> <last> <n>``: a write block applied its operations first..last (``n``
  workload operations) locally; written before the block's ``write()`` returns, and
  before anything could make them durable.
- ``I <first> <last> <n>``: that block's ``write()`` returned: the operations are
  accepted (durable in the outbox).
- ``R <clock as JSON>``: the store failed and memory was restored from it
  (:meth:`~crdt_ops.transport.amqp.AmqpNode.on_restored`), to that clock: read like
  ``S`` (memory beyond the store is gone), without a restart.
- ``L <last>``: the replica retired after its operation ``last`` and stopped
  replicating: from then on it applies nothing, so no operation counts as lost *at*
  it (one applied there twice, or never issued, still counts); issuing anything
  above ``last`` is an anomaly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from crdt_ops.replica import Replica


class LedgerWriter:
    """Appends one replica process's ledger lines (format: see the module docstring).

    Each line is one ``write(2)`` to a file opened with ``O_APPEND``: it is in the
    kernel when the call returns (a SIGKILL of the process cannot lose it) and is
    never torn. Construct it after the replica was restored from its store: it
    writes the ``S`` line with the recovered clock and hooks ``on_applied``."""

    def __init__(self, path: Path, replica: Replica) -> None:
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._me = replica.replica_id
        #: set by the workload around a write block; own operations applied outside one
        #: are the replica's own membership operations (founding, admissions)
        self.in_block = False
        self._system: list[tuple[int, int]] = []
        self._line("S " + json.dumps(dict(replica.clock), sort_keys=True,
                                     separators=(",", ":")))
        replica.on_applied.append(self.applied)

    def _line(self, text: str) -> None:
        if self._fd is not None:
            os.write(self._fd, (text + "\n").encode())

    def applied(self, origin: str, first: int, last: int) -> None:
        """Operations ``first..last`` of ``origin`` were applied here; own ones outside
        a write block are membership operations: a block of no workload operation,
        pending until :meth:`committed`."""
        self._line(f"A {origin} {first} {last}")
        if origin == self._me and not self.in_block:
            self._system.append((first, last))
            self.pending(first, last, 0)

    def committed(self, last: int) -> None:
        """The replica's own operations up to ``last`` are durable in its outbox."""
        done = [b for b in self._system if b[1] <= last]
        for first, end in done:
            self.accepted(first, end, 0)
        self._system = [b for b in self._system if b[1] > last]

    def pending(self, first: int, last: int, n: int) -> None:
        """A write block applied its operations ``first..last`` (``n`` workload ops)."""
        self.in_block = False
        self._line(f"P {first} {last} {n}")

    def accepted(self, first: int, last: int, n: int) -> None:
        """That write block's ``write()`` returned: accepted (durable)."""
        self._line(f"I {first} {last} {n}")

    def restored(self, clock: dict[str, int]) -> None:
        """The store failed and memory was restored from it, to ``clock`` (the ``R``
        line: the restart rule applies, without a restart)."""
        self.in_block = False
        own = clock.get(self._me, 0)
        self._system = [b for b in self._system if b[1] <= own]
        self._line("R " + json.dumps(clock, sort_keys=True, separators=(",", ":")))

    def left(self, last: int) -> None:
        """The replica retired after its operation ``last`` and stopped replicating."""
        self._line(f"L {last}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
