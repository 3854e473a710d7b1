"""Order statistics of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(xs: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``xs`` (in any order; 0 <= q <= 1): the
    ``ceil(q * n)``-th smallest of the ``n`` samples, at least the smallest (so the
    p99 of 200 samples is the 198th smallest, and every result is a sample).
    Raises IndexError if ``xs`` is empty."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
