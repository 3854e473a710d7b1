"""The services' own settings, declared like the replica's
(:class:`crdt_ops.transport.config.Settings`): each is a flag and a ``CRDT_OPS_*``
environment variable, read once by :func:`crdt_ops.transport.config.from_args` (flag, else
variable, else default) and handed to the service.

- :class:`WebSettings`: where web serves its API and page;
- :class:`LogicSettings`: logic's placement rules (``services/logic.py``);
- :class:`WorkerSettings`: a worker's node, capacity, lease and runtime
  (``services/worker.py``, ``services/lease.py``, ``services/runtime.py``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from crdt_ops.transport.config import option
from services.lease import DEFAULT_LEASE_S
from services.model import DEFAULT_CELL, check_cell


def split_cells(cells: str) -> tuple[str, ...]:
    """The cell names of a comma-separated ``--cells`` (each checked, none twice);
    ValueError for a bad one."""
    names = tuple(check_cell(c.strip()) for c in cells.split(","))
    if len(set(names)) != len(names):
        raise ValueError(f"--cells names a cell twice: {cells!r}")
    return names


@dataclass(frozen=True)
class WebSettings:
    """``crdt-ops web`` (and the demo's page)."""

    host: str = option("127.0.0.1", help="the address the HTTP server listens on")
    port: int = option(8080, env="CRDT_OPS_HTTP_PORT", help="the HTTP port", lowest=1,
                       highest=65535)
    cells: str = option(DEFAULT_CELL, help="the cells whose worker nodes web shows, "
                                           "comma-separated (each cell is a group of its own)")

    @property
    def cell_names(self) -> tuple[str, ...]:
        return split_cells(self.cells)


@dataclass(frozen=True)
class LogicSettings:
    """``crdt-ops logic``: the placement rules."""

    quota: int = option(20, lowest=1,
                        help="containers running per owner (logic refuses more)")
    margin_s: float = option(1.0, lowest=0,
                             help="seconds logic waits past the end of a silent node's lease "
                                  "(plus a quarter) before it moves the node's containers")
    cells: str = option(DEFAULT_CELL, help="the cells whose worker nodes logic places "
                                           "containers on, comma-separated (each cell is a "
                                           "group of its own)")

    @property
    def cell_names(self) -> tuple[str, ...]:
        return split_cells(self.cells)


@dataclass(frozen=True)
class WorkerSettings:
    """``crdt-ops worker``: one node's worker."""

    node: str = option("", help="this worker's node name (empty: the host name)")
    cell: str = option(DEFAULT_CELL, help="the cell this worker's node belongs to (its "
                                          "heartbeats go to that cell's group only)")
    capacity: int = option(10, lowest=0, help="containers on this worker's node")
    lease_s: float = option(DEFAULT_LEASE_S, lowest=4,
                            help="the worker's lease in seconds: how long its containers run "
                                 "without a heartbeat the broker confirmed "
                                 "(services/lease.py; at least 4 heartbeats)")
    container_command: str = option("sleep 1000000", flag="--command", env="CRDT_OPS_COMMAND",
                                    help="what a container runs (a local process, or the "
                                         "command in the Docker image)")
    runtime: str = option("auto", choices=("auto", "process", "docker"),
                          help="local processes, Docker, or Docker when an engine answers "
                               "(auto)")
    image: str = option("busybox", help="the image of a Docker container")
    runtime_dir: str = option("", help="where the worker keeps its pid files, its lease file "
                                       "and its guard's pid (empty: <--store>.runtime-<node>, "
                                       "without --store crdt-ops.worker.<node>.runtime)")

    @property
    def node_name(self) -> str:
        """``node``, else this machine's host name."""
        return self.node or socket.gethostname()

