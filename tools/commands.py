"""The development tools as ``crdt-ops`` commands: ``story``, ``simulate``, ``cells``,
``histories``, ``chaos``, ``fuzz`` and ``platform-chaos``. :mod:`services.cli` imports
this module only when one of them is run, and :func:`register` adds that one command (its
flags, the lower bounds of its numeric flags, and its own checks) to the ``crdt-ops``
parser."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crdt_ops.transport import config
from services.cli import Bounds


def _story(args: argparse.Namespace) -> int:
    from tools.sim.demo import run_demo

    return 0 if run_demo(seed=args.seed) else 1


def _simulate(args: argparse.Namespace) -> int:
    from services.process import heeding_stops
    from tools.sim.simulation import simulate

    check = heeding_stops()
    print(f"simulating {args.replicas} replicas, {args.ops} operations ...", file=sys.stderr)
    result = simulate(args.replicas, args.ops, args.seed, progress=True, check=check)
    print(result.line())
    return 0 if result.converged else 1


def _add_story(p: argparse.ArgumentParser) -> Bounds:
    p.add_argument("--seed", type=int, default=1,
                   help="the random seed of the story's network (default %(default)s)")
    p.set_defaults(func=_story)
    return {}


def _add_simulate(p: argparse.ArgumentParser) -> Bounds:
    p.add_argument("--replicas", type=int, default=100,
                   help="replicas in the group (default %(default)s)")
    p.add_argument("--ops", type=int, default=2000,
                   help="operations issued in all, at random replicas (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed: the same seed, the same run (default %(default)s)")
    p.set_defaults(func=_simulate)
    return {"replicas": (1, False), "ops": (0, False)}


def _add_cells(p: argparse.ArgumentParser) -> Bounds:
    from tools.sim.cells import add_arguments, command

    add_arguments(p)
    p.set_defaults(func=command)
    return {"cell_size": (1, False), "containers_per_node": (1, False),
            "starts_per_node": (1, False), "heartbeat_s": (1, False), "idle_s": (0, True)}


def _add_histories(p: argparse.ArgumentParser) -> Bounds:
    from tools.sim.histories import add_arguments, command

    add_arguments(p)
    p.set_defaults(func=command)
    return {"count": (0, False), "steps": (1, False)}


def _check_keep_dir(args: argparse.Namespace) -> None:
    if args.keep_dir is not None:
        config.check_writable(args.keep_dir, "--keep-dir", directory=True)


def _add_chaos(p: argparse.ArgumentParser) -> Bounds:
    from tools.chaos import add_arguments

    add_arguments(p)
    p.set_defaults(check=_check_keep_dir)
    return {"pause_s": (0, False), "lock_s": (0, False), "per_write": (1, False),
            "late_max_delay_s": (0, False), "timeout": (0, True)}


def _check_fuzz(args: argparse.Namespace) -> None:
    config.Settings(amqp_url=args.amqp_url)


def _add_fuzz(p: argparse.ArgumentParser) -> Bounds:
    from tools.fuzz import add_arguments, run

    add_arguments(p)
    p.set_defaults(func=run, check=_check_fuzz, replica_settings=False)
    return {"messages": (0, False), "replicas": (1, False), "ops": (0, False),
            "more": (0, False), "max_waiting_per_origin": (1, False),
            "gap_timeout_s": (0, True), "atheris_seconds": (0, False), "timeout": (0, True)}


def _add_platform_chaos(p: argparse.ArgumentParser) -> Bounds:
    from tools.platform_chaos import add_arguments

    add_arguments(p)
    p.set_defaults(check=_check_keep_dir)
    return {"duration": (0, False), "containers": (1, False), "lease_s": (4, False),
            "action_interval_s": (0, True), "fault_interval_s": (0, True),
            "timeout": (0, True)}


_ADDERS = {"story": _add_story, "simulate": _add_simulate, "cells": _add_cells,
           "histories": _add_histories,
           "chaos": _add_chaos, "fuzz": _add_fuzz, "platform-chaos": _add_platform_chaos}


def register(name: str, text: str, sub: Any) -> None:
    """Add the tool ``name`` (one of :data:`services.cli.TOOLS`) to ``sub``, the
    ``crdt-ops`` subparsers, with ``text`` as its help."""
    p = sub.add_parser(name, help=text)
    p.set_defaults(bounds=_ADDERS[name](p))
