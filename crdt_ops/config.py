"""Settings of a replica process: environment variables and CLI flags of the same names.

Every setting ``x_y`` is read from ``--x-y`` if given, else from ``CRDT_OPS_X_Y``,
else its default. Bad values stop the program with a message naming the flag.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote, urlparse

from crdt_ops.policy import Unauthenticated

QUEUE_TYPES = ("classic", "quorum")
AUTH_MODES = ("none", "user-id", "signature")
MEMBERSHIP_MODES = ("open", "managed")


@dataclass(frozen=True)
class Settings:
    """How a replica joins its group through RabbitMQ."""

    # the broker; several nodes of one cluster: URLs separated by commas (failover in turn)
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    group: str = "default"
    replica_id: str = ""  # empty: the one remembered in the store, else a new unique one
    store: str = ""  # empty: ./crdt-ops.<group>.<replica id or role>.sqlite
    queue_type: str = "classic"
    batch_ops: int = 500  # flush local operations after this many ...
    batch_delay_ms: float = 5.0  # ... or this long after the first one, under load
    prefetch: int = 1000
    heartbeat_s: float = 2.0
    gap_timeout_s: float = 10.0  # waiting this long for missing operations: re-read the stream
    max_waiting_per_origin: int = 10_000  # operations of one origin the causal buffer holds
    snapshot_every: int = 20_000  # operations applied between snapshots
    stream_max_age: str = "7D"  # retention of crdt.<group>.log
    stream_max_bytes: int = 0  # 0: no size bound
    metrics_port: int = 0  # 0: no Prometheus endpoint
    bootstrap: str = ""  # a peer's snapshot file to start from when the store is new
    # user-id: a message's origin replica must belong to the broker user that published it
    auth: str = "none"
    trusted_users: str = ""  # comma-separated broker users whose messages may name any origin
    signing_key: str = ""  # a key file (crdt_ops.signing): sign every message published
    keyring: str = ""  # with auth signature: the principals' public keys (JSON)
    # managed: an agreed membership (founding, admissions; crdt_ops.membership), so causal
    # stability advances and compaction runs; open: anyone writes, nothing is compacted
    membership: str = "managed"

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"--queue-type must be one of {', '.join(QUEUE_TYPES)}, "
                             f"got {self.queue_type!r}")
        if self.membership not in MEMBERSHIP_MODES:
            raise ValueError(f"--membership must be one of {', '.join(MEMBERSHIP_MODES)}, "
                             f"got {self.membership!r}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.auth == "signature" and not self.keyring:
            raise ValueError("--auth signature needs --keyring (the principals' public keys)")
        if not all(re.match(r"amqps?://", u) for u in self.amqp_urls):
            raise ValueError("--amqp-url must be amqp://... or amqps://... URLs, separated by "
                             "commas for several nodes of one cluster")
        if not self.group or any(c in self.group for c in " /#*"):
            raise ValueError(f"--group must be a non-empty name without spaces, '/', '#', '*'; "
                             f"got {self.group!r}")
        for name in ("batch_ops", "prefetch", "snapshot_every", "max_waiting_per_origin"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_delay_ms < 0 or self.heartbeat_s <= 0:
            raise ValueError("--batch-delay-ms must be >= 0 and --heartbeat-s > 0")

    @property
    def user(self) -> str:
        """The broker user of ``amqp_url`` (what RabbitMQ checks ``user_id`` against)."""
        return unquote(urlparse(self.amqp_url).username or "guest")

    def sender(self, user_id: str | None) -> str | None:
        """With ``--auth user-id``, the principal a delivered message's origin must
        belong to (its ``user_id``); None: any origin (another mode, or a trusted user).
        Raises Unauthenticated without user_id. (``--auth signature`` is checked by
        the transport's keyring.)"""
        if self.auth != "user-id" or (user_id and user_id in self.trusted_users.split(",")):
            return None
        if not user_id:
            raise Unauthenticated("the message carries no user_id (--auth user-id)")
        return user_id

    @property
    def amqp_urls(self) -> list[str]:
        """``amqp_url`` as a list: one URL, or several (nodes of one cluster) separated by
        commas; each is whole (credentials and query options such as ``cafile=``)."""
        return split_urls(self.amqp_url)

    # names operators rely on (a contract)
    @property
    def exchange(self) -> str:
        return f"crdt.{self.group}"

    def queue(self, replica_id: str) -> str:
        return f"crdt.{self.group}.{replica_id}"

    @property
    def stream(self) -> str:
        return f"crdt.{self.group}.log"

    @property
    def founder(self) -> str:
        """The exchange and queue (max length 1, reject-publish) whose one message
        names the group's founder: the first replica whose claim the broker accepted."""
        return f"crdt.{self.group}.founder"

    @property
    def dead_letter_exchange(self) -> str:
        return f"crdt.{self.group}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"crdt.{self.group}.dead"


def split_urls(text: str) -> list[str]:
    """``amqp://a/,amqps://b/?cafile=x`` -> the URLs (a comma splits before a scheme only)."""
    return [u for u in re.split(r"\s*,\s*(?=amqps?://)", text.strip()) if u]


def env_name(field: str) -> str:
    return "CRDT_OPS_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--x-y`` flag per setting (default: unset, so the environment applies)."""
    group = parser.add_argument_group("replica settings (flag, or environment variable)")
    for f in fields(Settings):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           help=f"{env_name(f.name)}; default {f.default!r}")


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None,
              **overrides: Any) -> Settings:
    """Settings from parsed flags, then the environment, then the defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = env.get(env_name(f.name))
        if raw is None:
            continue
        kind: type[Any] = type(f.default)
        try:
            values[f.name] = kind(raw)
        except ValueError:
            raise ValueError(f"--{f.name.replace('_', '-')} / {env_name(f.name)}: "
                             f"{raw!r} is not a valid {kind.__name__}") from None
    values.update(overrides)
    return Settings(**values)
