"""``--quick``: a benchmark's small, fast slice for the tests (not a measurement). An
option left unset takes the full run's value, or the slice's under ``--quick``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, tuple[Any, Any]]) -> None:
    """Set each option of ``defaults`` (its ``dest`` -> (the full run's value, --quick's))
    that is None in ``args`` (not given) to the value for the run asked
    (``args.quick``); options given keep their values."""
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
