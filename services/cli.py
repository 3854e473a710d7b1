"""The ``crdt-ops`` command: the services, a replica process, and the operator's commands
(retire, snapshot, keygen, delete-group).

The development tools (``story``, ``simulate``, ``cells``, ``histories``, ``chaos``,
``fuzz``, ``platform-chaos``) keep their names here but live in the top-level ``tools``
package of a source checkout: they are imported only when one of them is run
(:data:`TOOLS`), so the services never load them."""

from __future__ import annotations

import os
import signal
import sys


def _while_loading(signum: int, frame: object) -> None:
    """A stop signal while the command is still loading (main() then installs the handlers
    of a running command): say so and end at once, status 128 + the signal. Nothing has
    started yet, so there is nothing to clean up, and ``os._exit`` is what cannot be lost:
    a ``SystemExit`` raised here lands in whatever Python code runs at that instant, and
    is lost if that is a finaliser (a ``__del__`` run by garbage collection: Python prints
    it and goes on) or code that catches every exception. One was lost in CI: a replica
    of ``crdt-ops chaos`` said it stopped, then came up all the same."""
    print(f"crdt-ops: stopped by {signal.Signals(signum).name} while starting", file=sys.stderr,
          flush=True)
    os._exit(128 + signum)


if __name__ == "__main__":  # before the imports below, which take a moment
    for _sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_sig, _while_loading)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import difflib  # noqa: E402
import json  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from dataclasses import Field, fields  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import crdt_ops  # noqa: E402
from crdt_ops.transport import config  # noqa: E402
from services import logs  # noqa: E402
from services.process import Terminated, raise_terminated  # noqa: E402
from services.replica import add_arguments as runner_arguments  # noqa: E402


def _replica(args: argparse.Namespace) -> int:
    from services.replica import main as run_replica

    return run_replica(args.settings, args)


def _first_line(e: BaseException) -> str:
    """What an operator command says of error ``e``: its message's first line, or its type."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _retire(args: argparse.Namespace) -> int:
    from crdt_ops.transport.amqp import publish_retirement

    settings = args.settings
    try:
        last = asyncio.run(publish_retirement(settings, args.retiree, force=args.force))
    except Exception as e:
        from crdt_ops.transport.amqp import redact_urls

        print(f"crdt-ops retire: could not retire {args.retiree} from group {settings.group} "
              f"at {redact_urls(settings.amqp_url)}: {_first_line(e)}", file=sys.stderr,
              flush=True)
        return 1
    print(f"retired {args.retiree} from group {settings.group} after its operation {last}")
    return 0


#: The longest ``crdt-ops delete-group --watch-s`` (seconds): a replica beats at least every
#: fifth of its lease, and a heartbeat is sent every fifth tick whatever it writes.
MAX_WATCH_S = 3600.0


def _delete_group(args: argparse.Namespace) -> int:
    from crdt_ops.transport.amqp import redact_urls

    settings = args.settings
    where = f"group {settings.group} at {redact_urls(settings.amqp_url)}"
    try:
        return asyncio.run(_delete_group_async(args, where))
    except Exception as e:
        print(f"crdt-ops delete-group: could not delete {where}: {_first_line(e)}",
              file=sys.stderr, flush=True)
        return 1


async def _delete_group_async(args: argparse.Namespace, where: str) -> int:
    from crdt_ops.transport.amqp import connect_first
    from crdt_ops.transport.amqp.deletion import delete, survey

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    settings = args.settings
    ask = not args.yes and sys.stdin.isatty()
    conn = await connect_first(settings.amqp_urls)
    async with conn:
        # without --yes and a terminal it refuses after the listing: no watch for that
        found = await survey(conn, settings, args.replica or (),
                             args.watch_s if args.yes or ask else 0.0, say)
        if found.empty:
            print(f"{where}: nothing on the broker; nothing to delete")
            return 0
        print(f"{where}: members {', '.join(found.members) or '(none found)'}")
        for name in found.queues + found.exchanges:
            print(f"  {found.kind(name):8} {name}")
        print("(members are read from the group's stream: a member that never published to "
              "it, or whose messages its retention dropped, is named with --replica)")
        if found.in_use and not args.force:
            say(f"crdt-ops delete-group: still running: {', '.join(found.running)} (their "
                "connections hold their holder queues, they consume their queues, or their "
                "messages arrived): stop every replica of the group first (a replica still "
                "running declares the group again, empty), or pass --force; nothing deleted")
            return 1
        if not args.yes:
            if not ask:
                say("crdt-ops delete-group: pass --yes to delete these (no terminal to ask on); "
                    "nothing deleted")
                return 1
            n = len(found.queues) + len(found.exchanges)
            answer = await asyncio.to_thread(input, f"delete these {n} objects, and the "
                                             "group's history with them? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        deleted = await delete(conn, found)
    print(f"deleted {where}: {len(deleted)} object{'s' if len(deleted) != 1 else ''}; a "
          "replica of it must start from a new store (its old one holds the deleted group's "
          "state)")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from crdt_ops.transport.amqp import export_snapshot
    from crdt_ops.transport.store import StoreLocked

    try:
        clock = export_snapshot(args.store, args.out)
    except StoreLocked:
        raise UsageError(f"--store {args.store}: a replica runs on it: stop it first (a "
                         "snapshot is taken of a stopped replica's store)") from None
    print(f"wrote {args.out}: clock {clock}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from crdt_ops.transport.signing import keygen

    key, ring = keygen(args.principal, args.out)
    print(f"wrote {key} (secret: give it to {args.principal}'s replicas as --signing-key) "
          f"and added its public key to {ring} (give it to every replica as --keyring)")
    return 0


def _service(args: argparse.Namespace) -> int:
    from services.main import main as service_main

    return service_main(args.command, args, args.service)


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit status 2, nothing changed."""


class Parser(argparse.ArgumentParser):
    """argparse, with an error as one line (``crdt-ops CMD: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Numeric flags with a lower bound, per command: dest -> (bound, strictly greater).
Bounds = dict[str, tuple[float, bool]]

REPLICA_BOUNDS: Bounds = {"ops": (0, False), "rate": (0, False), "per_write": (1, False),
                          "more_on_signal": (0, False)}

#: The development tools: name -> one line of help. ``tools.commands.register`` adds the
#: one that is run (with its flags, bounds and checks); the others are listed in --help.
TOOLS = {
    "story": "the origin story, printed (in-memory network)",
    "simulate": "many replicas over the in-memory network",
    "cells": "the services' logic and workers in cells at scale (in-memory network): "
             "placed once, started once, converged, and the cost per Start",
    "histories": "random histories with joins, retirements and compaction, checked for "
                 "convergence (in memory)",
    "chaos": "fault injection over a throwaway broker, checked by a ledger (needs root and "
             "Debian's rabbitmq-server)",
    "fuzz": "hostile messages against real replica processes",
    "platform-chaos": "the services under faults over a throwaway broker, checked against "
                      "the processes that run (needs root and Debian's rabbitmq-server)",
}


def check_bounds(args: argparse.Namespace, bounds: Bounds) -> None:
    """Each flag named in ``bounds`` is a finite number at or above (or strictly above) its
    bound; raises UsageError naming the flag."""
    for dest, (bound, strict) in bounds.items():
        value = getattr(args, dest, None)
        config.check_finite(value, f"--{dest.replace('_', '-')}", UsageError)
        if value is not None and (value <= bound if strict else value < bound):
            raise UsageError(f"--{dest.replace('_', '-')} must be "
                             f"{'>' if strict else '>='} {bound:g}, got {value:g}")


def check(args: argparse.Namespace) -> None:
    """Every flag of ``args.command`` that names a number, a file or a directory, checked
    before anything runs or is created; raises UsageError (one line naming the flag).
    The settings are read here, once: ``args.settings`` (the replica's, for a command that
    runs or reaches one) and ``args.service`` (a service's own: services.main.Service)."""
    cmd = args.command
    try:
        logs.check_environment()
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_bounds(args, getattr(args, "bounds", {}))
    if cmd in ("web", "logic", "worker", "demo"):  # their own flags first (the demo's refusals)
        from services.main import read

        try:
            args.service = read(cmd, args)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        if hasattr(args, "amqp_url") and getattr(args, "replica_settings", True):
            settings = args.settings = (args.service.settings if hasattr(args, "service")
                                        else config.from_args(args))
            if cmd in ("web", "logic", "worker"):
                from services.main import principal_of

                principal = principal_of(cmd, args.service)
            else:
                principal = ""
            config.check_files(settings, store=cmd not in ("retire", "demo", "delete-group"),
                               signs=cmd not in ("demo", "delete-group"), principal=principal)
            if settings.metrics_port and cmd != "demo":
                from services.main import port_free

                port_free(settings.metrics_host, settings.metrics_port, "--metrics-port",
                          "--metrics-host")
        if cmd == "replica":
            for flag, path in (("--state-file", args.state_file), ("--ledger", args.ledger)):
                if path is not None:
                    config.check_writable(path, flag)
        elif cmd == "snapshot":
            config.check_store(args.store, must_exist=True)
            _check_holds_replica(args.store)
            config.check_writable(args.out, "--out")
            if os.path.abspath(args.out) == os.path.abspath(args.store):
                raise UsageError("--out must not be the store itself")
        elif cmd == "keygen":
            _check_keygen(args)
        elif cmd == "delete-group" and not 0 <= args.watch_s <= MAX_WATCH_S:
            raise UsageError(f"--watch-s must be a number of seconds from 0 to {MAX_WATCH_S:g}, "
                             f"got {args.watch_s:g}")
        if hasattr(args, "check"):  # a tool's own checks (tools/commands.py)
            args.check(args)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_holds_replica(path: str) -> None:
    """``path`` is a crdt-ops store that holds a replica (read only: nothing is created)."""
    import sqlite3
    from urllib.parse import quote

    try:
        db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            held = {"meta", "log"} <= tables and db.execute(
                "SELECT EXISTS(SELECT 1 FROM meta WHERE k = 'replica_id')").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise UsageError(f"--store {path}: cannot read it as a crdt-ops store ({e})") from None
    if not held:
        raise UsageError(f"--store {path} holds no replica (not a crdt-ops store, or one that "
                         "never ran)")


def _check_keygen(args: argparse.Namespace) -> None:
    from crdt_ops.errors import CrdtError
    from crdt_ops.policy import belongs
    from crdt_ops.transport.signing import _ed25519

    p = args.principal
    if not p or p.startswith(".") or p.endswith(".") or ".." in p \
            or any(c in p for c in "/\\\0") or not p.isprintable() \
            or any(c.isspace() for c in p) or not belongs(p, p):
        raise UsageError(f"{p!r} is not a principal name (such as web, logic, worker.node-1)")
    try:
        _ed25519()
    except CrdtError as e:
        raise UsageError(str(e)) from None
    config.check_writable(args.out, "--out", directory=True)
    ring = os.path.join(args.out, "keyring.json")
    if os.path.exists(ring):
        try:
            with open(ring) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"--out {args.out}: cannot read its keyring.json ({e})") from None
        if not isinstance(data, dict):
            raise UsageError(f"--out {args.out}: its keyring.json is not a keyring")
        config.check_writable(ring, "--out")
    key = os.path.join(args.out, f"{p}.key")
    if os.path.lexists(key):
        if not args.force:
            raise UsageError(f"--out {args.out}: {p}.key exists already: a new key would "
                             f"replace it and its keyring entry, and the replicas still "
                             f"signing with it would be refused; --force replaces it")
        config.check_writable(key, "--out")
    # (a --out that does not exist yet is made: check_writable above found where)


def main(argv: list[str] | None = None) -> int:
    from services.main import add_arguments as service_arguments

    parser = Parser(prog="crdt-ops", description="Operation-based CRDTs replicated through "
                    "RabbitMQ: the services, a replica process, the operator's commands and "
                    "(from a source checkout) the development tools.")
    parser.add_argument("--version", action="version",
                        version=f"crdt-ops {crdt_ops.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    service_arguments(sub)
    for name in ("web", "logic", "worker", "demo"):
        sub.choices[name].set_defaults(func=_service)

    rep = sub.add_parser(
        "replica", help="one replica over RabbitMQ (optionally with a workload)",
        description="Run one replica of a group over RabbitMQ until stopped (SIGTERM or "
                    "SIGINT): it joins the group, replays what it missed and applies what "
                    "the group sends; with --ops it also writes a workload of random "
                    "operations (what the fault tests and benchmarks drive).")
    config.add_arguments(rep)
    runner_arguments(rep)
    rep.set_defaults(func=_replica, bounds=REPLICA_BOUNDS)

    ret = sub.add_parser(
        "retire", help="tell a group that a replica is gone for good",
        description="Publish to --group that REPLICA_ID is gone for good, naming its last "
        "operation in the group's stream: causal stability and compaction stop waiting for "
        "it once every replica has delivered that operation (and any later one a member "
        "delivered). Run it once the replica is stopped and will not come back (a replica "
        "retired refuses to start again): it refuses while the replica runs, or when the "
        "stream holds no message of it, unless --force.")
    ret.add_argument("retiree", metavar="REPLICA_ID",
                     help="the id of the replica that is gone (as its logs and the group's "
                          "metrics name it), not this command's own")
    ret.add_argument("--force", action="store_true",
                     help="retire it even while it runs, or when the group's stream holds no "
                          "message of it")
    config.add_arguments(ret, only=("amqp_url", "group", "signing_key"))
    ret.set_defaults(func=_retire)

    dele = sub.add_parser(
        "delete-group", help="delete a group from the broker (its exchanges, streams and "
        "queues), once its replicas are stopped",
        description="Delete --group's exchanges, its streams, its dead-letter queue and the "
        "queue of each member that has one (the members are read from the group's stream; "
        "--replica names more). Its history goes with them: a replica of the group must then "
        "start from a new store. Refuses while a replica of it still runs (its connection "
        "holds its holder queue, it consumes its queue, or a message of it arrives within "
        "--watch-s), unless --force.")
    dele.add_argument("--replica", action="append", metavar="ID",
                      help="a member whose queue to delete too (repeatable)")
    dele.add_argument("--watch-s", type=float, default=5.0,
                      help=f"seconds to watch the group for replicas still running (default 5, "
                      f"at most {MAX_WATCH_S:g}; 0: do not watch)")
    dele.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    dele.add_argument("--force", action="store_true",
                      help="delete even while a replica still runs")
    config.add_arguments(dele, only=("amqp_url", "group"))
    dele.set_defaults(func=_delete_group)

    snap = sub.add_parser("snapshot", help="export a stopped replica's snapshot (for --bootstrap)")
    snap.add_argument("--store", required=True, help="the replica's SQLite store")
    snap.add_argument("--out", required=True, help="file to write the snapshot to")
    snap.set_defaults(func=_snapshot)

    keys = sub.add_parser("keygen", help="an Ed25519 signing key for a principal "
                          "(--auth signature)")
    keys.add_argument("principal", help="e.g. web, logic, worker.node-1")
    keys.add_argument("--out", default=".", help="directory for PRINCIPAL.key and keyring.json "
                      "(made if it does not exist)")
    keys.add_argument("--force", action="store_true",
                      help="replace PRINCIPAL.key if it exists (its replicas must then get "
                           "the new key: the keyring keeps the new public key only)")
    keys.set_defaults(func=_keygen)

    wanted = next((a for a in (sys.argv[1:] if argv is None else argv)
                   if not a.startswith("-")), None)
    for name, text in TOOLS.items():
        if name != wanted:
            sub.add_parser(name, help=text, add_help=False)
            continue
        try:
            from tools.commands import register
        except ImportError as e:
            print(f"crdt-ops {name}: a development tool of crdt-ops's source checkout, not "
                  f"installed here ({e}); run it from a clone: pip install -e '.[test]'",
                  file=sys.stderr, flush=True)
            return 2
        register(name, text, sub)

    # from here on SIGTERM stops like Ctrl-C (the commands that run an event loop catch
    # both there, in every state: services.process.StopSignals)
    signal.signal(signal.SIGTERM, raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # asyncio.run's, as it
    # wants it (an in-memory computation installs raise_interrupt: services/process.py)
    args, unknown = parser.parse_known_args(argv)
    prog = f"crdt-ops {args.command}"
    if unknown:  # argparse would name the top command's --help: name the one that was run
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        check(args)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    for name in unknown_variables():
        print(f"{prog}: ignoring {name}: no crdt-ops setting has that name"
              + (f" (did you mean {near}?)" if (near := meant(name)) else ""),
              file=sys.stderr, flush=True)
    logs.setup()  # one line per event, tracebacks at DEBUG only (services/logs.py)
    try:
        return int(args.func(args))
    except (KeyboardInterrupt, asyncio.CancelledError) as e:  # SIGINT, or SIGTERM (Terminated)
        stop = _stop_signal(e)
        if stop is None:
            raise
        sig = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        print(f"{prog}: stopped by {sig.name}", file=sys.stderr, flush=True)
        return 128 + sig
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:  # chaos and fuzz stop on SIGTERM this way
            print(f"{prog}: stopped by SIGTERM", file=sys.stderr, flush=True)
        raise
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # no traceback for the user (CRDT_OPS_LOG=DEBUG shows it)
        if os.environ.get("CRDT_OPS_LOG", "").upper() == "DEBUG":
            traceback.print_exc()
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{prog}: {type(e).__name__}{': ' + detail if detail else ''}",
              file=sys.stderr, flush=True)
        return 1


def known_variables() -> set[str]:
    """Every ``CRDT_OPS_*`` environment variable some crdt-ops command reads: the replica's
    and the services' settings, the logs', the ones a worker gives its containers, and the
    benchmark's database."""
    from services.runtime import CONTAINER_ENV, RUNTIME_ENV

    return {config.env_of(f) for f in _setting_fields()} | {
        "CRDT_OPS_LOG", "CRDT_OPS_LOG_FORMAT", CONTAINER_ENV, RUNTIME_ENV, "CRDT_OPS_PG_DSN",
        "CRDT_OPS_HISTORIES"}  # (the last: tests/core/test_membership.py's count)


def _setting_fields() -> list[Field[Any]]:
    """The fields of every settings class a crdt-ops command reads."""
    from services.settings import LogicSettings, WebSettings, WorkerSettings

    return [f for cls in (config.Settings, WebSettings, LogicSettings, WorkerSettings)
            for f in fields(cls)]


def meant(name: str) -> str | None:
    """The variable an unknown ``CRDT_OPS_*`` variable ``name`` most likely meant: the one
    of the setting whose flag it spells (``CRDT_OPS_PORT``, after ``--port``, is
    ``CRDT_OPS_HTTP_PORT``), else the closest known name, else None."""
    for f in _setting_fields():
        if name == config.env_name(config.flag_of(f).lstrip("-").replace("-", "_")):
            return config.env_of(f)
    near = difflib.get_close_matches(name, known_variables(), 1)
    return near[0] if near else None


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``CRDT_OPS_*`` variables of ``env`` (default ``os.environ``) that no crdt-ops
    command reads: a misspelt setting would otherwise be ignored without a word."""
    env = os.environ if env is None else env
    known = known_variables()
    return sorted(n for n in env if n.startswith("CRDT_OPS_") and n not in known)


def _stop_signal(e: BaseException) -> KeyboardInterrupt | None:
    """The stop signal (a KeyboardInterrupt: SIGINT, or SIGTERM as :class:`Terminated`)
    that ``e`` is, or that ``e`` was raised while handling: ``asyncio.run`` cancels the
    tasks left when a signal interrupts it, and a library's callback (aiormq closing its
    connection) can raise that cancellation over the signal; None if there is none."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__context__
    return None


if __name__ == "__main__":
    raise SystemExit(main())
