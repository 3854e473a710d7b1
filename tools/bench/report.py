"""How the benchmarks show what they measured: progress lines on stderr, and
``key: value`` headers and Markdown tables on stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence


class Progress:
    """Progress lines on stderr, stamped with the seconds since the run started."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}",
                  file=sys.stderr, flush=True)


def info_lines(info: Mapping[str, str]) -> list[str]:
    """One ``key:`` line per entry of ``info`` (in its order), values aligned at column 10."""
    return [f"{k + ':':<10}{v}" for k, v in info.items()]


def thousands(x: float | None) -> str:
    """``x`` rounded to a whole number with thousands separators; ``-`` for None."""
    return "-" if x is None else f"{x:,.0f}"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    """``head`` and ``rows`` as a Markdown table whose columns are as wide as their
    widest cell. Column ``i`` is right-aligned (cells padded on the left, its rule
    ending in ``:``) where ``align[i]`` is ``"r"``, else left-aligned. Raises
    ValueError unless ``align`` and every row have one entry per column of ``head``."""
    if len(align) != len(head) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(head)}), got {align!r}")
    lines = [list(head), *(list(r) for r in rows)]
    right = [a == "r" for a in align]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w)
                                 for c, w, r in zip(cells, widths, right, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if r else "-")
                          for w, r in zip(widths, right, strict=True)) + "|"
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def first_left(columns: int, left: int = 1) -> str:
    """An ``align`` for :func:`markdown_table`: the first ``left`` columns
    left-aligned, the others (numbers) right-aligned."""
    return "l" * left + "r" * (columns - left)
