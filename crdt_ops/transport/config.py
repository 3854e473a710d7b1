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
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from yarl import URL

from crdt_ops.transport.topology import Topology

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
    signing_key: str = ""  # a key file (crdt_ops.transport.signing): sign every message published
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
        if self.gap_timeout_s <= 0:
            raise ValueError("--gap-timeout-s must be > 0")
        if self.stream_max_bytes < 0:
            raise ValueError("--stream-max-bytes must be >= 0 (0: no size bound)")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0 (off) to 65535, got {self.metrics_port}")
        if not re.fullmatch(r"[0-9]+[YMDhms]", self.stream_max_age):
            raise ValueError("--stream-max-age must be a number and a unit (Y, M, D, h, m or "
                             f"s), such as 7D; got {self.stream_max_age!r}")
        for url in self.amqp_urls:
            try:
                parsed = URL(url)
                parsed.port  # noqa: B018  (a port that is no number raises here)
            except ValueError as e:
                raise ValueError(f"--amqp-url {redact(url)}: {e}") from None
            if not parsed.host:
                raise ValueError(f"--amqp-url {redact(url)} names no host")
        names = Topology.of(self)
        if self.replica_id and (len(names.queue(self.replica_id).encode()) > 255
                                or not self.replica_id.isprintable()
                                or any(c.isspace() for c in self.replica_id)):
            raise ValueError("--replica-id must be printable, without spaces, and short enough "
                             f"that crdt.<group>.<id> fits in 255 bytes; got {self.replica_id!r}")
        if len(names.stream.encode()) > 255:
            raise ValueError("--group is too long (a queue name is at most 255 bytes)")

    @property
    def user(self) -> str:
        """The broker user of ``amqp_url`` (what RabbitMQ checks ``user_id`` against)."""
        return unquote(urlparse(self.amqp_url).username or "guest")

    @property
    def amqp_urls(self) -> list[str]:
        """``amqp_url`` as a list: one URL, or several (nodes of one cluster) separated by
        commas; each is whole (credentials and query options such as ``cafile=``)."""
        return split_urls(self.amqp_url)


def redact(url: str) -> str:
    """One URL without its password, for messages."""
    try:
        parsed = URL(url)
        return str(parsed.with_password("***")) if parsed.password else url
    except ValueError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


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


# ------------------------------------------------------------ files named on the command line


def check_readable(path: str, flag: str) -> None:
    """``path`` is an existing file this process may read; else ValueError naming ``flag``."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{flag} {path}: not a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {path}: not readable (permission denied)")


def check_writable(path: str | os.PathLike[str], flag: str, directory: bool = False) -> None:
    """``path`` can be written (created) by this process without creating anything now:
    an existing file (or, with ``directory``, directory) that is writable, or a new
    name in an existing writable directory; else ValueError naming ``flag``."""
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            raise ValueError(f"{flag} {path}: not a directory")
        if not directory and p.is_dir():
            raise ValueError(f"{flag} {path}: is a directory")
        if not os.access(p, os.W_OK | (os.X_OK if directory else 0)):
            raise ValueError(f"{flag} {path}: not writable (permission denied)")
        return
    parent = p.parent
    if directory:  # it may be made with its parents: the nearest existing one decides
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create it in {parent} (permission denied)")


SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(path: str, flag: str = "--store", must_exist: bool = False) -> None:
    """A store file: new in a writable directory (unless ``must_exist``), or an existing
    SQLite file (empty counts) this process may read and write."""
    if must_exist:
        check_readable(path, flag)
    check_writable(path, flag)
    if Path(path).is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise ValueError(f"{flag} {path}: cannot read it ({e.strerror})") from None
        if head and head != SQLITE_HEADER:
            raise ValueError(f"{flag} {path}: not a crdt-ops store (not an SQLite file)")


def check_files(settings: Settings, store: bool = True) -> None:
    """Everything the settings name on disk, checked before anything is created:
    ``--store`` (or the default store's directory), ``--bootstrap``, ``--signing-key``
    and ``--keyring`` (parsed, which needs the ``cryptography`` package). Raises
    ValueError with one line naming the flag."""
    if store:
        check_store(settings.store or "crdt-ops.sqlite",
                    "--store" if settings.store else "the store's directory (--store)")
    if settings.bootstrap:
        check_readable(settings.bootstrap, "--bootstrap")
    from crdt_ops.errors import CrdtError
    from crdt_ops.transport.signing import Keyring, Signer

    for flag, path, load in (("--signing-key", settings.signing_key, Signer.from_file),
                             ("--keyring", settings.keyring, Keyring.from_file)):
        if path:
            check_readable(path, flag)
            try:
                load(path)
            except CrdtError as e:
                raise ValueError(f"{flag} {path}: {e}") from None
