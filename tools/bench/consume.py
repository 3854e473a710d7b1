"""The benchmarks' ``--consume`` flag: how the crdt-ops replicas they start receive the
group's messages (``Settings.consume``: a queue of their own each, or the group's stream
read on from the offset they logged; crdt_ops/transport/amqp/stream_consumer.py)."""

from __future__ import annotations

import argparse

from crdt_ops.transport.config import CONSUME_MODES


def add_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--consume {queue,stream}`` (default queue) to a benchmark's parser."""
    p.add_argument("--consume", choices=CONSUME_MODES, default="queue",
                   help="how the replicas receive: queue, a queue of their own each (the "
                        "default); stream, the group's stream from the offset they logged")
