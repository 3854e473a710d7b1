"""Argument types the benchmarks' command lines share (``argparse`` ``type=``): a bad value
is a one-line usage error, not a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An ``argparse`` type: an integer of at least ``low``."""
    def integer(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n

    return integer


def above(low: float) -> Callable[[str], float]:
    """An ``argparse`` type: a number greater than ``low``."""
    def number(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not x > low:
            raise argparse.ArgumentTypeError(f"must be > {low:g}, got {text}")
        return x

    return number
