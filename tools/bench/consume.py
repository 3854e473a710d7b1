"""The benchmarks' ``--consume`` flag: how the crdt-ops replicas they start receive the
group's messages (``Settings.consume``: a queue of their own each, or the group's stream
read on from the offset they logged; crdt_ops/transport/amqp/stream_consumer.py)."""

from __future__ import annotations

import argparse

from crdt_ops.transport.config import CONSUME_MODES, DISK_SYNC_MODES


def add_argument(p: argparse.ArgumentParser, default: str | None = "queue") -> None:
    """Add ``--consume {queue,stream}`` to a benchmark's parser: ``default`` is what the
    replicas it starts use by default (the library's ``queue``; None: each service's own,
    services.main.SERVICES_CONSUME for web and logic, WORKER_CONSUME for workers)."""
    p.add_argument("--consume", choices=CONSUME_MODES, default=default,
                   help="how the replicas receive: queue, a queue of their own each; stream, "
                        "the group's stream from the offset they logged (default: "
                        f"{default or 'its own: web and logic stream, workers queue'})")
    p.add_argument("--disk-sync", choices=DISK_SYNC_MODES, default="first",
                   help="the replicas' --disk-sync: first, what they send is on their disk "
                        "before it is published (the default); alongside, published while "
                        "the disk syncs")
