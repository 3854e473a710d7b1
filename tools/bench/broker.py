"""The broker the benchmarks run on: its URL, what it is, unique names on it,
and deleting what a benchmark declared there."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

import aio_pika

from crdt_ops.transport.amqp import redact_urls
from crdt_ops.transport.topology import Topology
from tools import harness
from tools.bench.cpu import broker_pid
from tools.bench.retry import retry_cleanup

#: The broker of a benchmark run unless its command line names another.
DEFAULT_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def new_group(prefix: str = "bench") -> str:
    """A name no other run uses: ``<prefix>-`` and 10 random hex digits."""
    return harness.new_group(prefix)


def broker_version(url: str) -> str:
    """The product and version the broker at ``url`` announces when connected to
    (``RabbitMQ 3.13.1``); ``unknown (<error type>)`` if it cannot be reached."""
    async def ask() -> str:
        conn = await aio_pika.connect(url)
        async with conn:
            props: Any = conn.transport.connection.server_properties  # type: ignore[union-attr]
            return f"{props.get('product', 'RabbitMQ')} {props.get('version', '?')}"

    try:
        return str(asyncio.run(ask()))
    except Exception as e:
        return f"unknown ({type(e).__name__})"


def broker_info(url: str) -> str:
    """The header's ``broker`` entry: :func:`broker_version` at ``url`` without its
    password, and whether a broker runs on this machine (whose CPU is then measured)."""
    return (f"{broker_version(url)} at {redact_urls(url)}"
            + (" (on this machine)" if broker_pid() else ""))


async def delete_group_async(url: str, group: str, replicas: Iterable[str],
                             progress: Callable[[str], None]) -> None:
    """Delete the group's queues (one per replica id in ``replicas``), stream and
    exchanges, retrying while the broker is away (:func:`retry_cleanup`); never
    raises an :class:`Exception`."""
    queues, exchanges = Topology(group).objects(replicas)
    await retry_cleanup(f"deleting group {group}", progress,
                        lambda: harness.delete_queues(url, queues, exchanges),
                        gave_up=f"could not delete group {group}: delete its queues "
                                f"crdt.{group}.* by hand")


def delete_group(url: str, group: str, replicas: Iterable[str],
                 progress: Callable[[str], None]) -> None:
    """:func:`delete_group_async` from code that runs no event loop."""
    asyncio.run(delete_group_async(url, group, replicas, progress))
