"""Settings of a replica process: environment variables and CLI flags of the same names.

Every setting ``x_y`` is read from ``--x-y`` if given, else from ``CRDT_OPS_X_Y``,
else its default. Bad values stop the program with a message naming the flag.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from yarl import URL

from crdt_ops.policy import belongs
from crdt_ops.transport.topology import Topology

if TYPE_CHECKING:
    from crdt_ops.transport.signing import Keyring, Signer

T = TypeVar("T")

QUEUE_TYPES = ("classic", "quorum")
AUTH_MODES = ("none", "user-id", "signature")
MEMBERSHIP_MODES = ("open", "managed")
CONSUME_MODES = ("queue", "stream")
DISK_SYNC_MODES = ("first", "alongside")
#: The shortest ``--heartbeat-s`` and ``--gap-timeout-s`` (seconds): a replica's heartbeat
#: is a message to the whole group, and a period far below a hop's time would flood it.
MIN_PERIOD_S = 0.01
def option(default: Any, *, flag: str = "", env: str = "", help: str = "",
           lowest: float | None = None, highest: float | None = None,
           choices: tuple[str, ...] = ()) -> Any:
    """A setting of a settings dataclass: its ``default`` (whose type is the setting's),
    and where the loader differs from the rule (flag ``--x-y`` and variable
    ``CRDT_OPS_X_Y`` for a field ``x_y``): ``flag``, ``env``; ``help`` for ``--help``;
    ``lowest``/``highest`` bounds of a number and ``choices`` of a string, checked by
    :func:`from_args`."""
    return field(default=default, metadata={
        "flag": flag, "env": env, "help": help, "lowest": lowest, "highest": highest,
        "choices": choices})


#: The Python types a :class:`Settings` field of each annotation takes.
_KINDS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float)}


@dataclass(frozen=True)
class Settings:
    """How a replica joins its group through RabbitMQ.

    ``Settings(...)`` takes its arguments and the defaults only; the ``CRDT_OPS_*``
    environment variables (and the flags) are read by :func:`load` and :func:`from_args`.
    Raises TypeError for a field of the wrong type (``batch_ops="5"``), ValueError for a
    value out of its range or not one of its choices, each naming the field's flag."""

    amqp_url: str = option("amqp://guest:guest@localhost:5672/", help=(
        "the broker; several nodes of one cluster: URLs separated by commas (each tried in "
        "turn when the connection is lost)"))
    group: str = option("default", help="the replica group: its exchange crdt.<group>, its "
                                        "stream crdt.<group>.log")
    replica_id: str = option("", help="this replica's id (empty: the one its store "
                                      "remembers, else a new unique one)")
    store: str = option("", help="its SQLite file (empty: "
                                 "./crdt-ops.<group>.<replica id or role>.sqlite)")
    queue_type: str = option("classic", choices=QUEUE_TYPES,
                             help="the type of the replicas' own queues")
    batch_ops: int = option(500, help="local operations sealed into one message at most")
    batch_delay_ms: float = option(5.0, help=(
        "under load, the longest a write waits for others to share its message and commit; "
        "a lone write goes at once"))
    prefetch: int = option(1000, help="deliveries in flight, unacknowledged, at most")
    heartbeat_s: float = option(2.0, help=(
        "seconds between clock reports (heartbeats): causal stability and the gap watch "
        "advance at that pace; writes never wait for one"))
    gap_timeout_s: float = option(10.0, help=(
        "seconds an operation may wait for missing earlier ones before the stream is read "
        "again (and a publish waits for its confirm before /healthz says so)"))
    max_waiting_per_origin: int = option(10_000, help=(
        "operations of one origin the causal buffer holds at most"))
    snapshot_every: int = option(20_000, help="operations applied between snapshots")
    stream_max_age: str = option("7D", help="retention of the group's stream, crdt.<group>.log "
                                            "(a number and Y, M, D, h, m or s)")
    stream_max_bytes: int = option(0, help="the stream's size bound in bytes (0: none)")
    metrics_port: int = option(0, help="Prometheus /metrics and /healthz on this port (0: off)")
    metrics_host: str = option("0.0.0.0", help="the address the metrics port listens on")
    bootstrap: str = option("", help="a peer's snapshot file to start from when the store is "
                                     "new (crdt-ops snapshot)")
    auth: str = option("none", choices=AUTH_MODES, help=(
        "how a delivered message's origin is checked: user-id, against the broker user that "
        "published it; signature, against its Ed25519 signature and --keyring"))
    trusted_users: str = option("", help="comma-separated broker users whose messages may name "
                                         "any origin (--auth user-id)")
    signing_key: str = option("", help="a key file (crdt_ops.transport.signing): sign every "
                                       "message published")
    keyring: str = option("", help="with --auth signature: the principals' public keys (JSON)")
    membership: str = option("managed", choices=MEMBERSHIP_MODES, help=(
        "managed: an agreed membership (founding, admissions), so causal stability advances "
        "and compaction runs; open: anyone writes, nothing is compacted"))
    consume: str = option("queue", choices=CONSUME_MODES, help=(
        "how the group's messages reach this replica: queue, a queue of its own, "
        "crdt.<group>.<replica id>; stream, the group's stream, read on from the offset it "
        "logged last"))
    disk_sync: str = option("first", choices=DISK_SYNC_MODES, help=(
        "first: what a replica sends is on its disk before it is published; alongside: "
        "published while the disk syncs on a thread (writers are answered after the sync "
        "either way)"))

    def __post_init__(self) -> None:
        for f in fields(self):  # (a flag or a variable arrives converted: from_args, load)
            value, kinds = getattr(self, f.name), _KINDS[str(f.type)]
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise TypeError(f"{flag_of(f)} (Settings.{f.name}) must be {f.type}, not "
                                f"{type(value).__name__} {value!r}")
            check_finite(value, flag_of(f))
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"--queue-type must be one of {', '.join(QUEUE_TYPES)}, "
                             f"got {self.queue_type!r}")
        if self.membership not in MEMBERSHIP_MODES:
            raise ValueError(f"--membership must be one of {', '.join(MEMBERSHIP_MODES)}, "
                             f"got {self.membership!r}")
        if self.consume not in CONSUME_MODES:
            raise ValueError(f"--consume must be one of {', '.join(CONSUME_MODES)}, "
                             f"got {self.consume!r}")
        if self.disk_sync not in DISK_SYNC_MODES:
            raise ValueError(f"--disk-sync must be one of {', '.join(DISK_SYNC_MODES)}, "
                             f"got {self.disk_sync!r}")
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
        if self.batch_delay_ms < 0:
            raise ValueError(f"--batch-delay-ms must be >= 0, got {self.batch_delay_ms:g}")
        for name in ("heartbeat_s", "gap_timeout_s"):
            if getattr(self, name) < MIN_PERIOD_S:
                raise ValueError(f"--{name.replace('_', '-')} must be at least "
                                 f"{MIN_PERIOD_S:g} s, got {getattr(self, name):g}")
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
    """The environment variable of setting ``field``: ``CRDT_OPS_`` and its name in capitals."""
    return "CRDT_OPS_" + field.upper()


def flag_of(f: Field[Any]) -> str:
    """The command-line flag of setting ``f``."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def env_of(f: Field[Any]) -> str:
    """The environment variable of setting ``f``."""
    return str(f.metadata.get("env") or env_name(f.name))


def help_of(cls: type[Any], name: str) -> str:
    """The ``--help`` text of setting ``name`` of the settings dataclass ``cls``."""
    (f,) = (f for f in fields(cls) if f.name == name)
    return str(f.metadata.get("help", ""))


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) \
        else repr(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any] = Settings,
                  title: str = "replica settings (flag, or environment variable)",
                  only: tuple[str, ...] = ()) -> None:
    """Add one flag per setting of the dataclass ``cls`` (all, or those named in ``only``)
    to ``parser``, in a group named ``title``; each flag's default is unset, so that
    :func:`from_args` falls back to the environment, then to the default."""
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if only and f.name not in only:
            continue
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices") or None
        group.add_argument(flag_of(f), dest=f.name, default=None, choices=choices,
                           help=f"{env_of(f)}; default {_shown(f.default)}"
                                + (f": {text}" if text else ""))


def given(args: argparse.Namespace, cls: type[Any], name: str,
          env: Mapping[str, str] | None = None) -> bool:
    """Whether setting ``name`` of the settings dataclass ``cls`` was given, by its flag in
    ``args`` or its environment variable in ``env`` (default ``os.environ``), rather than
    left to its default."""
    env = os.environ if env is None else env
    (f,) = (f for f in fields(cls) if f.name == name)
    return getattr(args, name, None) is not None or env_of(f) in env


def check_finite(value: object, names: str, error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``names`` (a flag, and its variable) if ``value`` is a float
    that is not a finite number (NaN, an infinity: every bound compares false with NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{names} must be a finite number, got {value!r}")


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None,
              **overrides: Any) -> Settings:
    """The replica's :class:`Settings` from parsed flags, then the environment, then the
    defaults (see :func:`load`)."""
    return load(Settings, args, env, **overrides)


def load(cls: type[T], args: argparse.Namespace, env: Mapping[str, str] | None = None,
         **overrides: Any) -> T:
    """An instance of the settings dataclass ``cls`` (such as :class:`Settings`): each
    setting from its flag in ``args``, else its environment variable in ``env`` (default
    ``os.environ``), else its default; ``overrides`` win over all three. Raises
    ValueError naming the flag and the variable for a value of the wrong type, out of its
    bounds or choices (and whatever ``cls`` itself checks)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = env.get(env_of(f))
        if raw is None:
            continue
        names = f"{flag_of(f)} / {env_of(f)}"
        kind: type[Any] = type(f.default)
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{names}: {raw!r} is not a valid {kind.__name__}") from None
        check_finite(value, names)
        lowest, highest = f.metadata.get("lowest"), f.metadata.get("highest")
        if lowest is not None and highest is not None and not lowest <= value <= highest:
            raise ValueError(f"{names} must be {lowest:g} to {highest:g}, got {value:g}")
        if lowest is not None and value < lowest:
            raise ValueError(f"{names} must be at least {lowest:g}, got {value:g}")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ValueError(f"{names} must be one of {', '.join(f.metadata['choices'])}, "
                             f"got {value!r}")
        values[f.name] = value
    values.update(overrides)
    return cls(**values)


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


def check_files(settings: Settings, store: bool = True, signs: bool = True,
                principal: str = "") -> None:
    """Everything the settings name on disk, checked before anything is created:
    ``--store`` (or the default store's directory), ``--bootstrap``, ``--signing-key``
    and ``--keyring`` (parsed, which needs the ``cryptography`` package), and with
    ``signs`` (a command that sends what replicas check) under ``--auth signature`` that
    the others will take what it signs as the replica, and as ``principal`` if given (a
    service's: :func:`check_signer`). Raises ValueError with one line naming the flag."""
    if store:
        check_store(settings.store or f"crdt-ops.{settings.group}.<name>.sqlite",
                    "--store" if settings.store
                    else "the store's directory (the working directory; --store names another)")
    if settings.bootstrap:
        check_readable(settings.bootstrap, "--bootstrap")
    from crdt_ops.errors import CrdtError
    from crdt_ops.transport.signing import Keyring, Signer

    loaded: dict[str, Any] = {}
    for flag, path, load in (("--signing-key", settings.signing_key, Signer.from_file),
                             ("--keyring", settings.keyring, Keyring.from_file)):
        if path:
            check_readable(path, flag)
            try:
                loaded[flag] = load(path)
            except CrdtError as e:
                raise ValueError(f"{flag} {path}: {e}") from None
    if settings.auth == "signature" and signs:
        check_signer(loaded.get("--signing-key"), loaded["--keyring"], settings.replica_id,
                     principal)


def check_signer(signer: Signer | None, keyring: Keyring, replica_id: str = "",
                 principal: str = "") -> None:
    """Under ``--auth signature``, that this replica's messages will be taken: it has a
    key (``signer``), the keyring holds that key's public half under its principal, and
    ``replica_id`` and ``principal`` (when known) belong to that principal. Else
    ValueError naming the flag: every other replica would refuse this one's messages
    (dead-lettered, unauthenticated), while it went on as if they were taken."""
    if signer is None:
        raise ValueError("--auth signature needs --signing-key, this replica's own key "
                         "(crdt-ops keygen PRINCIPAL makes one): the others refuse what it "
                         "sends unsigned")
    if keyring.public_hex(signer.principal) != signer.public_hex():
        raise ValueError(f"--signing-key: the key of {signer.principal!r} is not the one "
                         f"--keyring holds for {signer.principal!r}: the others would refuse "
                         "what this replica signs with it; give every replica the keyring "
                         "crdt-ops keygen wrote with this key")
    for what, name in (("--replica-id", replica_id), ("this service's principal", principal)):
        if name and not belongs(name, signer.principal):
            raise ValueError(f"--signing-key: it signs as {signer.principal!r}, and {what} "
                             f"{name!r} is not that principal's: the others would refuse "
                             "its messages; give it the key of the principal it belongs to")
