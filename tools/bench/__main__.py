"""``python -m tools.bench COMMAND [options]``: run one benchmark.

Each benchmark module provides ``add_parser(subparsers)``, which registers its
subcommand and sets ``run`` (a function of the parsed arguments returning the
exit status) as a default; adding a benchmark is one line in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tools.bench import amqp, cells, core, hop, platform, services, wakeup

#: The modules' ``add_parser`` functions, one per subcommand.
_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    core.add_parser,
    amqp.add_parser,
    services.add_parser,
    platform.add_parser,
    hop.add_parser,
    cells.add_parser,
    wakeup.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Benchmarks of crdt-ops. Results go to stdout, progress to stderr.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the benchmark, return its status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
